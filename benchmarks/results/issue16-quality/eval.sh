#!/bin/bash
cd /work/wt16
export PRUNEDATA_NO_PROGRESS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
P=".venv/bin/prunedata"
run() { local t=$(date +%s); echo "== $*"; nice -n 10 "$@"; echo "   rc=$? wall $(( $(date +%s) - t ))s"; }
run $P evaluate runs/infl30.json runs/infl30-refit.json --architectures mlp --seeds 3 --epochs 15 --no-full --cache-dir /work/eval-cache -o runs/eval30-mlp.json
run $P evaluate runs/infl70.json runs/infl70-refit.json --architectures mlp --seeds 3 --epochs 15 --no-full --cache-dir /work/eval-cache -o runs/eval70-mlp.json
# not run (CPU): run $P evaluate runs/infl30.json runs/infl30-refit.json --architectures cnn_bn --seeds 3 --epochs 15 --no-full --cache-dir /work/eval-cache -o runs/eval30-cnnbn.json
# not run (CPU): run $P evaluate runs/infl70.json runs/infl70-refit.json --architectures cnn_bn --seeds 3 --epochs 15 --no-full --cache-dir /work/eval-cache -o runs/eval70-cnnbn.json
