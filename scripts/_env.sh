# Shared by scripts/main_job.sh and scripts/test.sh: system packages and the project's virtualenv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "== installing Debian package dataset-fashion-mnist (real Fashion-MNIST, 30 MB)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
VENV="${PRUNEDATA_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating virtualenv $VENV"
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
# pip is left as the venv ships it: newer pips refuse to prepare the pb1-detectron2 sdist (direct URL deps)
# torch/torchvision pinned here (a local wheel on these machines); pyproject declares a range.
TORCH_PINS="torch==${PRUNEDATA_TORCH:-2.14.1} torchvision==${PRUNEDATA_TORCHVISION:-0.29.1}"
