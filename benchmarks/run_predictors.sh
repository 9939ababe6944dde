#!/usr/bin/env bash
# Everything of the keypoint predictors, in one command, for the current detector:
# trajectories -> damping of `linear` -> train rnn, vae, vrnn, rnn-interp -> ship them -> benchmark ->
# make the best causal predictor the default. Each stage skips or resumes what is done
# for the same detector, and starts over where the detector changed.
#
#   benchmarks/run_predictors.sh                                   # the training checkpoint
#   DETECTOR="--model fomm-256-quarter" benchmarks/run_predictors.sh # shipped weights
#   DETECTOR="--model fomm-256-quarter" BENCH="--model fomm-256-fast" benchmarks/run_predictors.sh
#
# Environment: DATA (shared data folder), DETECTOR (trajectories model arguments), BENCH (the
# benchmark's renderer, default DETECTOR; another shipped model with the same detector tensors),
# STEPS (training steps per predictor), NICE (prefix for the heavy commands).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-/work/shared/data}
DETECTOR=${DETECTOR:---checkpoint runs/fomm-256-quarter/checkpoint.pt --config fomm-256-quarter}
TRAJ=${TRAJ:-runs/cache/trajectories}
STEPS=${STEPS:-2000}
NICE=${NICE:-nice -n 10}

# A checkpoint is rewritten while the motion model trains: work from one snapshot of it.
if [[ $DETECTOR == *--checkpoint* ]]; then
  ck=$(sed -E 's/.*--checkpoint +([^ ]+).*/\1/' <<<"$DETECTOR")
  mkdir -p runs/cache
  cp "$ck" runs/cache/detector-snapshot.pt
  DETECTOR=${DETECTOR/$ck/runs/cache/detector-snapshot.pt}
fi

$NICE python -m kpcodec.train.trajectories --data "$DATA" $DETECTOR --out "$TRAJ"
$NICE python -m kpcodec.train.predictor_training tune-linear --trajectories "$TRAJ"
for kind in rnn vae vrnn rnn-interp; do
  $NICE kpcodec train-predictor --kind $kind --trajectories "$TRAJ" --out runs/pred-$kind --steps "$STEPS" --resume
  variant=""
  [[ $kind == vae || $kind == vrnn ]] && variant="--sample-variant"
  python -m kpcodec.train.predictor_training export runs/pred-$kind --name $kind $variant
done
$NICE python benchmarks/predictor_quality.py --trajectories "$TRAJ" --data "$DATA" ${BENCH:-$DETECTOR} --set-default
