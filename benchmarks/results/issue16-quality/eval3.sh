#!/bin/bash
# cnn_bn at keep 0.3 (70% pruned): first one seed (eval30-cnnbn-1seed, not kept), then 3 seeds reusing it from the cache
cd /work/wt16
export PRUNEDATA_NO_PROGRESS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
nice -n 10 .venv/bin/prunedata evaluate runs/infl30.json --architectures cnn_bn --seeds 1 --epochs 15 --no-full --cache-dir /work/eval-cache -o runs/eval30-cnnbn-1seed.json
nice -n 10 .venv/bin/prunedata evaluate runs/infl30.json runs/infl30-refit.json --architectures cnn_bn --seeds 3 --epochs 15 --no-full --cache-dir /work/eval-cache -o runs/eval30-cnnbn.json
