#!/bin/bash
# influence selections at keep 0.3 / 0.7, with and without refit_head, one proxy (cnn, 3 epochs, all 60k)
cd /work/wt16
export PRUNEDATA_NO_PROGRESS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
P=".venv/bin/prunedata"
run() { local t=$(date +%s); echo "== $*"; nice -n 10 "$@"; echo "   rc=$? wall $(( $(date +%s) - t ))s"; }
run $P prune fashion-mnist --method influence --keep-ratio 0.3 --checkpoint runs/proxy-cnn.pt -o runs/infl30.json
run $P prune fashion-mnist --method influence --keep-ratio 0.3 --checkpoint runs/proxy-cnn.pt --resume --option refit_head=true -o runs/infl30-refit.json
run $P prune fashion-mnist --method influence --keep-ratio 0.7 --checkpoint runs/proxy-cnn.pt --resume -o runs/infl70.json
run $P prune fashion-mnist --method influence --keep-ratio 0.7 --checkpoint runs/proxy-cnn.pt --resume --option refit_head=true -o runs/infl70-refit.json
