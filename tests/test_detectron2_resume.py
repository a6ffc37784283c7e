"""Issue 17: Detectron2 resume keeps the mask (AdaPrunerTrainer's state inside Detectron2's own
checkpoint), a killed run resumes to the uninterrupted selection, and weight 0 means no gradient in
the default loss mode whatever the normalisation."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.engine import DefaultTrainer  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from prunedata.adapters.detectron2 import (AdaPrunerTrainer, make_voc_dataset, register_voc,  # noqa: E402
                                           resolve_mode, small_faster_rcnn_config)
from prunedata.errors import CheckpointError, RecipeMismatchError  # noqa: E402
from prunedata.selection import Selection  # noqa: E402

pytestmark = pytest.mark.detectron2
CLASSES = ["square", "disk", "triangle"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc17")
    make_voc_dataset(root, 8, size=64, seed=5)
    return root


def _cfg(name, out, **kw):
    cfg = small_faster_rcnn_config(3, train=(name,), image_size=64, max_iter=16, ims_per_batch=2,
                                   output_dir=str(out), seed=3, **kw)
    cfg.SOLVER.CHECKPOINT_PERIOD = 6
    return cfg


def _trainer(cfg, **kw):
    kw.setdefault("warmup_epochs", 1)
    return AdaPrunerTrainer(cfg, keep_ratio=0.5, mask_lr=3.0, **kw)


_KILL = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from detectron2.engine import HookBase
    from prunedata.adapters.detectron2 import AdaPrunerTrainer, register_voc, small_faster_rcnn_config
    root, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    name = register_voc("t17_voc", root, class_names=["square", "disk", "triangle"], overwrite=True)
    cfg = small_faster_rcnn_config(3, train=(name,), image_size=64, max_iter=16, ims_per_batch=2, output_dir=out,
                                   seed=3)
    cfg.SOLVER.CHECKPOINT_PERIOD = 6

    from prunedata import _io
    real_replace = _io.os.replace

    def replace(src, dst):  # SIGKILL while the checkpoint of iteration `kill_at` is being put in place
        if str(dst).endswith("model_%07d.pth" % kill_at):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst)

    _io.os.replace = replace
    t = AdaPrunerTrainer(cfg, keep_ratio=0.5, mask_lr=3.0, warmup_epochs=1)
    t.resume_or_load(resume=False)
    t.train()
""")


def test_killed_detectron2_run_resumes_to_the_uninterrupted_selection(voc, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        name = register_voc("t17_voc", voc, class_names=CLASSES, overwrite=True)
        full = _trainer(_cfg(name, tmp_path / "a"))
        full.resume_or_load(resume=False)
        full.train()
        ref = Selection.load(full.selection_path)
        # a real process, SIGKILLed mid-run while writing the checkpoint of iteration 11 (that of 5 is whole)
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        r = subprocess.run([sys.executable, "-c", _KILL, str(voc), str(tmp_path / "b"), "11"], env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
        assert not (tmp_path / "b" / "model_0000011.pth").exists()  # never a truncated checkpoint
        assert (tmp_path / "b" / "last_checkpoint").read_text() == "model_0000005.pth"
        ck = torch.load(tmp_path / "b" / "model_0000005.pth", weights_only=False)
        assert "adapruner" in ck["trainer"]["_trainer"]  # the pruner state is in Detectron2's checkpoint
        assert not (tmp_path / "b" / "adapruner_selection.json").exists()
        resumed = _trainer(_cfg(name, tmp_path / "b"))
        resumed.resume_or_load(resume=True)
        assert resumed.start_iter == 6 and resumed.pruner.epoch == 1  # 6 iterations x 2 images / 8 images
        assert resumed.pruner.global_step == ck["trainer"]["_trainer"]["adapruner"]["global_step"] > 0
        resumed.train()
    finally:
        torch.set_num_threads(threads)
    sel = Selection.load(resumed.selection_path)
    torch.testing.assert_close(resumed.pruner.mask.detach(), full.pruner.mask.detach(), rtol=0, atol=1e-5)
    assert np.array_equal(sel.kept, ref.kept)
    assert [h["samples"] for h in resumed.pruner.history] == [h["samples"] for h in full.pruner.history]
    assert ref.params["loss_mode"] == "microbatch" and ref.params["loss_mode_requested"] == "auto"
    assert not [p.name for p in (tmp_path / "b").iterdir() if p.name.endswith(".tmp")]  # the killed write's temp is gone


def test_detectron2_resume_refuses_another_recipe_and_a_foreign_checkpoint(voc, tmp_path):
    name = register_voc("t17_voc2", voc, class_names=CLASSES, overwrite=True)
    cfg = _cfg(name, tmp_path / "a")
    cfg.SOLVER.MAX_ITER = 4
    t = _trainer(cfg, epochs=1, warmup_epochs=0)
    t.resume_or_load(resume=False)
    t.checkpointer.save("model_0000001", iteration=1)  # what PeriodicCheckpointer writes (no need to train)
    with pytest.raises(RecipeMismatchError, match="pruner.keep_ratio: 0.5 in the checkpoint, 0.6 now"):
        AdaPrunerTrainer(cfg, keep_ratio=0.6, mask_lr=3.0, epochs=1, warmup_epochs=0).resume_or_load(resume=True)
    cfg2 = cfg.clone()
    cfg2.SOLVER.BASE_LR = 0.02
    with pytest.raises(RecipeMismatchError, match="base_lr: 0.01 in the checkpoint, 0.02 now"):
        _trainer(cfg2, epochs=1, warmup_epochs=0).resume_or_load(resume=True)
    ok = _trainer(cfg, epochs=1, warmup_epochs=0)
    ok.resume_or_load(resume=True)
    assert ok.start_iter == 1  # the trainer was at iteration 0 when the checkpoint was written
    # a plain DefaultTrainer's checkpoint carries no mask: refused, not silently restarted at epoch 0
    plain_cfg = cfg.clone()
    plain_cfg.OUTPUT_DIR = str(tmp_path / "plain")
    p = DefaultTrainer(plain_cfg)
    p.checkpointer.save("model_0000001", iteration=1)
    with pytest.raises(CheckpointError, match="holds no AdaPruner state"):
        _trainer(plain_cfg, epochs=1, warmup_epochs=0).resume_or_load(resume=True)


def test_default_loss_mode_is_safe_with_batchnorm(voc):
    """'auto' never picks 'heads' when BatchNorm normalises with batch statistics."""
    cfg = small_faster_rcnn_config(3, image_size=64, norm="BN")
    assert resolve_mode(build_model(cfg).train(), "auto") == "microbatch"
    assert resolve_mode(build_model(small_faster_rcnn_config(3, image_size=64, norm="GN")).train(), "auto") == "heads"
    frozen = small_faster_rcnn_config(3, image_size=64, norm="FrozenBN")
    assert resolve_mode(build_model(frozen).train(), "auto") == "heads"
