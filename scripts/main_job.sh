#!/usr/bin/env bash
# Install prunedata and run the main job: AdaPruner on Fashion-MNIST (keep 70%), writing a
# selection file and a short report under runs/, then train a fresh model on the selection.
# Extra arguments go to `prunedata prune` (e.g. --quick for a smoke run).
source "$(dirname "$0")/_env.sh"
echo "== installing prunedata"
# shellcheck disable=SC2086
python -m pip install -q $TORCH_PINS .   # a regular (wheel) install, as users get it
mkdir -p runs
echo "== prunedata prune fashion-mnist --method adapruner --keep-ratio 0.7 $*"
prunedata -v prune fashion-mnist --method adapruner --keep-ratio 0.7 -o runs/fashion-mnist-adapruner.json "$@"
echo "== prunedata train fashion-mnist --selection runs/fashion-mnist-adapruner.json"
MS=$(python -c "import json;print(json.load(open('runs/fashion-mnist-adapruner.json')).get('params',{}).get('max_samples') or '')")
prunedata train fashion-mnist --selection runs/fashion-mnist-adapruner.json --epochs 2 \
  ${MS:+--max-samples $MS} -o runs/fashion-mnist-adapruner.train.json
echo "== done: runs/fashion-mnist-adapruner.json, runs/fashion-mnist-adapruner.report.txt, runs/fashion-mnist-adapruner.train.json"
