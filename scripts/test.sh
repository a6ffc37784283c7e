#!/usr/bin/env bash
# Install prunedata with its test dependencies (Detectron2 included) and run the test suite.
source "$(dirname "$0")/_env.sh"
echo "== installing prunedata[test]"
# shellcheck disable=SC2086
python -m pip install -q $TORCH_PINS -e '.[test]'
echo "== installing Detectron2 (scripts/install_detectron2.sh)"
bash scripts/install_detectron2.sh
echo "== running tests"
export PRUNEDATA_NO_PROGRESS=1
python -m pytest -q -p no:cacheprovider --durations=15 "$@"
