#!/bin/bash
# One lent-GPU call (device tool, repo root; .devrun from tools/gpu/pack.py carried): fit several
# generators behind the fast model's frozen motion at once, one process each, for S seconds.
# Each run starts from checkpoints/fomm-256-fast/resume.pt grown into its config
# (kpcodec.train.grow; as-is for fomm-256-fast itself, a control); a second call on the warm
# machine continues each run from its last weights (Adam restarted, so RECIPE may change).
# Results in $OUT: <name>-fp16.pt, <name>-log.jsonl, <name>.txt.
#   RUNS="deep:fomm-256-fast-deep wide:fomm-256-fast-wide" RECIPE=generator-grow bash tools/gpu/generators.sh S
set -u
S=${1:-400}; OUT=${OUT:-/tmp/out}; BATCH=${BATCH:-32}; RECIPE=${RECIPE:-generator-grow}
RUNS=${RUNS:-"deep:fomm-256-fast-deep wide:fomm-256-fast-wide control:fomm-256-fast"}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
start=$(date +%s)
threads=$(( $(nproc) / $(echo $RUNS | wc -w) )); [ $threads -lt 1 ] && threads=1
{ nvidia-smi -L; python3 -c "import torch; print(torch.__version__, torch.cuda.is_available())"
  [ -d /tmp/landmarks ] || python3 tools/gpu/unpack.py .devrun/landmarks.npz /tmp/landmarks; } >> $OUT/setup.txt 2>&1

source tools/gpu/common.sh
for run in $RUNS; do
  name=${run%%:*}; config=${run#*:}
  if [ -f /tmp/$name/checkpoint.pt ]; then
    weights_only /tmp/$name/checkpoint.pt /tmp/$name-init.pt; rm -rf /tmp/$name
  elif [ $config = fomm-256-fast ]; then cp checkpoints/fomm-256-fast/resume.pt /tmp/$name-init.pt
  else python3 -m kpcodec.train.grow --weights checkpoints/fomm-256-fast/resume.pt --from fomm-256-fast \
         --to $config --out /tmp/$name-init.pt >> $OUT/setup.txt 2>&1; fi
  (timeout -s INT $S python3 -m kpcodec train --data .devrun/data --landmarks /tmp/landmarks --out /tmp/$name \
     --config $config --recipe $RECIPE --init /tmp/$name-init.pt --steps 10000000 --val-every 100000000 \
     --checkpoint-minutes 1 --threads $threads --batch $BATCH > $OUT/$name.txt 2>&1
   echo "exit $? after $(( $(date +%s) - start )) s" >> $OUT/$name.txt
   cp /tmp/$name/weights-fp16.pt $OUT/$name-fp16.pt; cp /tmp/$name/log.jsonl $OUT/$name-log.jsonl) &
done
wait
echo "done after $(( $(date +%s) - start )) s" >> $OUT/setup.txt
