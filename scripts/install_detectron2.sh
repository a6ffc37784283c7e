#!/usr/bin/env bash
# Install Detectron2 v0.6 (Python sources only, no compiled ops) into the CURRENT python environment.
#
# Detectron2 is not on PyPI under its own name. The sdist `pb1-detectron2==0.6` carries Detectron2's
# Python sources (identical to upstream tag v0.6) but not its C++/CUDA sources, so `pip install` of it
# fails to build. This script:
#   1. installs Detectron2's runtime dependencies with the pins v0.6 needs (pillow<10 for
#      Image.LINEAR, setuptools>=70.1,<81 for pkg_resources and a built-in bdist_wheel -- a Python 3.11
#      venv ships setuptools 65 without it --, fvcore 0.1.5.x, iopath<0.1.10), while holding
#      the already installed torch / torchvision / numpy at their current versions;
#   2. downloads the sdist, copies its `detectron2/` package into site-packages, and writes
#      `detectron2/_C.py`, a stub whose attribute access raises a clear ImportError (the compiled ops
#      serve only rotated boxes, deformable convolution and the fast COCO evaluator -- nothing that a
#      Faster R-CNN / RetinaNet with standard boxes needs);
#   3. writes a `detectron2-0.6.dist-info` so `pip list` shows it and `pip uninstall detectron2` works;
#   4. checks that detectron2, its model builder, torch and torchvision import afterwards.
#
# Idempotent: if a working Detectron2 is already importable it does nothing (use --force to reinstall
# the stub build). Users with their own Detectron2 build (e.g. from github.com/facebookresearch/
# detectron2) do not need this script at all; prunedata.adapters.detectron2 works with any v0.6+.
#
# Usage: scripts/install_detectron2.sh [--force]      (PYTHON=/path/to/python to pick the interpreter)
set -euo pipefail

PY="${PYTHON:-python}"
FORCE=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "install_detectron2.sh: unknown argument '$arg' (use --force or --help)" >&2; exit 2 ;;
  esac
done

log() { echo "[install_detectron2] $*"; }
die() { echo "[install_detectron2] ERROR: $*" >&2; exit 1; }

command -v "$PY" >/dev/null 2>&1 || die "python interpreter '$PY' not found (set PYTHON=...)"
"$PY" -c "import torch" 2>/dev/null || die "torch is not importable by $PY; install torch (and torchvision) first"

check_d2() {
  "$PY" - <<'EOF'
import importlib, sys
import torch, torchvision  # noqa: F401  (must still import after the pins)
import detectron2
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: F401
from detectron2.engine import SimpleTrainer, DefaultTrainer  # noqa: F401
from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (DefaultTrainer's writers)
cfg = get_cfg()
print("detectron2", detectron2.__version__, "torch", torch.__version__, "torchvision", torchvision.__version__)
EOF
}

if [[ "$FORCE" == 0 ]] && HAVE="$(check_d2 2>/dev/null)"; then
  log "Detectron2 already works in this environment: $(echo "$HAVE" | tail -1). Nothing to do (--force reinstalls)."
  exit 0
fi

SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
[[ -d "$SITE" && -w "$SITE" ]] || die "site-packages '$SITE' is missing or not writable"
log "python: $(command -v "$PY") ; site-packages: $SITE"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Hold torch / torchvision / numpy at what is installed: the pins below must not move them.
"$PY" - >"$WORK/hold.txt" <<'EOF'
from importlib import metadata
for name in ("torch", "torchvision", "numpy"):
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        pass
EOF
log "holding: $(tr '\n' ' ' <"$WORK/hold.txt")"
# pip's configured constraint file (if any) is replaced by -c on the command line; keep its lines too.
CFG_CONSTRAINT="$("$PY" -m pip config get global.constraint 2>/dev/null || true)"
if [[ -n "$CFG_CONSTRAINT" && -f "$CFG_CONSTRAINT" ]]; then
  grep -vE '^\s*(torch|torchvision|numpy)\b' "$CFG_CONSTRAINT" >>"$WORK/hold.txt" || true
fi

log "installing Detectron2 v0.6 runtime dependencies"
"$PY" -m pip install -q -c "$WORK/hold.txt" \
  "pillow<10" "setuptools>=70.1,<81" wheel "fvcore>=0.1.5,<0.1.6" "iopath>=0.1.7,<0.1.10" \
  pycocotools omegaconf hydra-core yacs termcolor tabulate cloudpickle matplotlib tensorboard \
  || die "pip could not install Detectron2's dependencies (see above)"

log "downloading the pb1-detectron2==0.6 sdist (Detectron2 v0.6 Python sources)"
( cd "$WORK" && "$PY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
    pb1-detectron2==0.6 -d "$WORK/dl" ) || die "could not download pb1-detectron2==0.6"
SDIST="$(ls "$WORK"/dl/pb1-detectron2-0.6.tar.gz 2>/dev/null || true)"
[[ -n "$SDIST" ]] || die "pb1-detectron2-0.6.tar.gz not found after download"
tar -xzf "$SDIST" -C "$WORK" || die "could not unpack $SDIST"
SRC="$WORK/pb1-detectron2-0.6/detectron2"
[[ -f "$SRC/__init__.py" && -f "$SRC/modeling/meta_arch/rcnn.py" ]] || die "unexpected sdist layout in $SDIST"

log "copying detectron2/ into $SITE"
rm -rf "$SITE/detectron2" "$SITE"/detectron2-*.dist-info
cp -r "$SRC" "$SITE/detectron2"

cat >"$SITE/detectron2/_C.py" <<'EOF'
"""Stand-in for Detectron2's compiled extension (installed by prunedata's scripts/install_detectron2.sh).

This Detectron2 was installed from Python sources only. The compiled ops it lacks serve rotated
boxes (ROIAlignRotated, nms_rotated, box_iou_rotated), deformable convolution and the fast COCO
evaluator; standard Faster R-CNN / RetinaNet / Mask R-CNN with axis-aligned boxes do not use them.
"""


def __getattr__(name):
    raise ImportError(
        f"detectron2._C.{name} is not available: this Detectron2 was installed without its compiled "
        "C++/CUDA ops (prunedata's scripts/install_detectron2.sh). Rotated boxes, deformable "
        "convolution and the fast COCO evaluator need a full build: see "
        "https://detectron2.readthedocs.io/en/latest/tutorials/install.html"
    )
EOF

"$PY" - "$SITE" <<'EOF'
import base64, hashlib, os, sys
site = sys.argv[1]
info = os.path.join(site, "detectron2-0.6.dist-info")
os.makedirs(info, exist_ok=True)
with open(os.path.join(info, "METADATA"), "w") as f:
    f.write("Metadata-Version: 2.1\nName: detectron2\nVersion: 0.6\n"
            "Summary: Detectron2 v0.6 Python sources without compiled ops (installed from pb1-detectron2 "
            "by prunedata scripts/install_detectron2.sh)\nLicense: Apache-2.0\n")
with open(os.path.join(info, "INSTALLER"), "w") as f:
    f.write("prunedata-install_detectron2\n")
rows = []
for base in ("detectron2", "detectron2-0.6.dist-info"):
    for root, _, files in os.walk(os.path.join(site, base)):
        for fn in files:
            if fn == "RECORD":
                continue
            p = os.path.join(root, fn)
            data = open(p, "rb").read()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            rows.append(f"{os.path.relpath(p, site)},sha256={digest},{len(data)}")
rows.append("detectron2-0.6.dist-info/RECORD,,")
with open(os.path.join(info, "RECORD"), "w") as f:
    f.write("\n".join(rows) + "\n")
EOF

log "checking the installation"
OUT="$(check_d2 2>&1)" || { echo "$OUT" >&2; die "Detectron2 was copied but does not import (see above)"; }
log "ok: $(echo "$OUT" | tail -1)"
"$PY" -m pip check >/dev/null 2>&1 || log "note: 'pip check' reports conflicts (unrelated to Detectron2 or caused by the pins): $("$PY" -m pip check 2>&1 | head -5 | tr '\n' ';')"
