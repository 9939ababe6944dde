#!/bin/bash
# One lent-GPU session (device tool, repo root; .devrun made by tools/gpu/pack.py and carried):
# continue the quarter model's motion with recipe `mouth` at batch 32 for Q seconds, then fit
# the fast model's generator to that motion for F seconds. Results land in $OUT:
# *-fp32.pt (weights), *-log.jsonl, *.txt (console). A second call on the same warm machine
# continues both runs where the first stopped.
# Recipes come from QRECIPE (default mouth) and FRECIPE (generator-only); every SNAP seconds a
# copy of the quarter weights is kept ($name-<s>s-fp16.pt) so a curve can be measured here.
#   bash tools/gpu/train.sh Q F
set -u
Q=${1:-330}; F=${2:-120}; OUT=${OUT:-/tmp/out}; BATCH=${BATCH:-32}
QRECIPE=${QRECIPE:-mouth}; FRECIPE=${FRECIPE:-generator-only}; SNAP=${SNAP:-0}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
start=$(date +%s)
{ nvidia-smi -L; python3 -c "import torch; print(torch.__version__, torch.cuda.is_available())"
  python3 tools/gpu/unpack.py .devrun/landmarks.npz /tmp/landmarks; } > $OUT/setup.txt 2>&1

source tools/gpu/common.sh
train() {  # name seconds args...
  local name=$1 secs=$2; shift 2
  local t0=$(date +%s)
  (last=0; while sleep 40; do
     cp /tmp/$name/weights-fp16.pt $OUT/$name-latest-fp16.pt 2>/dev/null
     t=$(( $(date +%s) - t0 ))
     if [ "$name" = quarter ] && [ $SNAP -gt 0 ] && [ $(( t - last )) -ge $SNAP ]; then
       cp /tmp/$name/weights-fp16.pt $OUT/$name-${t}s-fp16.pt 2>/dev/null && last=$t; fi
   done) &
  local copier=$!
  timeout -s INT $secs python3 -m kpcodec train --data .devrun/data --landmarks /tmp/landmarks --out /tmp/$name \
    --steps 10000000 --val-every 100000000 --checkpoint-minutes 1 --threads 8 --batch $BATCH "$@" > $OUT/$name.txt 2>&1
  echo "exit $? after $(( $(date +%s) - start )) s" >> $OUT/$name.txt
  kill $copier
  weights_only /tmp/$name/checkpoint.pt $OUT/$name-fp32.pt && rm -f $OUT/$name-latest-fp16.pt
  cp /tmp/$name/log.jsonl $OUT/$name-log.jsonl
}
if [ -f /tmp/quarter/checkpoint.pt ]; then from="--resume"; else from="--init .devrun/quarter-init.pt"; fi
train quarter $Q --config fomm-256-quarter --recipe $QRECIPE $from
gen=checkpoints/fomm-256-fast/resume.pt; [ -f /tmp/fast/checkpoint.pt ] && gen=/tmp/fast/checkpoint.pt
python3 -m kpcodec.train.transplant --motion /tmp/quarter/weights-fp16.pt --generator $gen \
  --out /tmp/fast-init.pt >> $OUT/setup.txt 2>&1
train fast $F --config fomm-256-fast --recipe $FRECIPE --init /tmp/fast-init.pt
echo "done after $(( $(date +%s) - start )) s" >> $OUT/setup.txt
