#!/bin/bash
# second unseen architecture: linear (cheap; cnn_bn does not fit the CPU time left)
cd /work/wt16
export PRUNEDATA_NO_PROGRESS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
P=".venv/bin/prunedata"
run() { local t=$(date +%s); echo "== $*"; nice -n 10 "$@"; echo "   rc=$? wall $(( $(date +%s) - t ))s"; }
run $P evaluate runs/infl30.json runs/infl30-refit.json --architectures linear --seeds 3 --epochs 15 --no-full --cache-dir /work/eval-cache -o runs/eval30-linear.json
run $P evaluate runs/infl70.json runs/infl70-refit.json --architectures linear --seeds 3 --epochs 15 --no-full --cache-dir /work/eval-cache -o runs/eval70-linear.json
