"""Detectron2 adapter: VOC/YOLO registration, per-image losses, AdaPruner training, pruned datasets.

Real Detectron2 models (ResNet-18 FPN Faster R-CNN from scratch) on real files written here, CPU.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

try:
    import detectron2  # noqa: F401
    from detectron2.data import DatasetCatalog  # noqa: F401
except ImportError:  # pragma: no cover
    pytest.skip("Detectron2 is not installed (run scripts/install_detectron2.sh)", allow_module_level=True)

from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from prunedata.adapruner import AdaPruner
from prunedata.adapters.detectron2 import (
    AdaPrunerSimpleTrainer, AdaPrunerTrainer, AnnotationError, batch_indices, detection_fingerprint,
    detection_selection, load_voc, load_yolo, make_voc_dataset, make_yolo_dataset, per_image_losses,
    register_pruned, register_voc, register_yolo, small_faster_rcnn_config,
)
from prunedata.errors import PruneDataError, SelectionMismatchError
from prunedata.selection import Selection

pytestmark = pytest.mark.detectron2
CLASSES = ["square", "disk", "triangle"]


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    make_voc_dataset(root, 8, size=64, seed=1)
    return root


@pytest.fixture(scope="module")
def yolo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("yolo")
    make_yolo_dataset(root, 6, size=64, seed=2, vary_size=True)
    return root


def _copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _write_voc_xml(path: Path, w: int, h: int, objects, filename: str = "x.jpg") -> None:
    body = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
        f"<xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for n, a, b, c, d in objects
    )
    path.write_text(f"<annotation><filename>{filename}</filename><size><width>{w}</width>"
                    f"<height>{h}</height></size>{body}</annotation>")


# --------------------------------------------------------------------------- import without detectron2
def test_package_imports_without_detectron2_and_names_the_install_script():
    code = textwrap.dedent("""
        import sys
        sys.modules["detectron2"] = None          # make `import detectron2` fail
        import prunedata.adapters.detectron2 as m
        assert m.is_available() is False
        try:
            m.register_voc
        except ImportError as e:
            assert "scripts/install_detectron2.sh" in str(e), str(e)
            print("OK")
        else:
            raise SystemExit("no ImportError")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout


# --------------------------------------------------------------------------- VOC
def test_voc_registration_records_ids_boxes_and_metadata(voc_root):
    name = register_voc("t_voc", voc_root, class_names=CLASSES, overwrite=True)
    recs = DatasetCatalog.get(name)
    assert len(recs) == 8
    assert [r["image_id"] for r in recs] == [f"{k:06d}" for k in range(8)]
    assert [r["prunedata_index"] for r in recs] == list(range(8))
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == CLASSES and meta.evaluator_type == "pascal_voc"
    # boxes: VOC 1-based xmin/ymin -> xmin-1, ymin-1, as Detectron2's own VOC loader
    xml = (voc_root / "Annotations" / "000000.xml").read_text()
    xmin = int(xml.split("<xmin>")[1].split("<")[0])
    xmax = int(xml.split("<xmax>")[1].split("<")[0])
    ann = recs[0]["annotations"][0]
    assert ann["bbox"][0] == xmin - 1 and ann["bbox"][2] == xmax
    assert recs[0]["height"] == 64 and recs[0]["width"] == 64
    assert Path(recs[0]["file_name"]).is_file()
    with pytest.raises(PruneDataError, match="already registered"):
        register_voc("t_voc", voc_root, class_names=CLASSES)


def test_voc_layout_errors(tmp_path, voc_root):
    with pytest.raises(PruneDataError, match="not a Pascal VOC directory: missing Annotations"):
        register_voc("t_bad", tmp_path)
    with pytest.raises(PruneDataError, match=r"split file .*test.txt does not exist; available splits: \['trainval'\]"):
        register_voc("t_bad", voc_root, split="test", class_names=CLASSES)


def test_voc_malformed_and_out_of_image_boxes(tmp_path, voc_root, caplog):
    root = _copy_tree(voc_root, tmp_path / "voc")
    (root / "Annotations" / "000001.xml").write_text("<annotation><size><width>64</wid")
    with pytest.raises(AnnotationError, match=r"000001\.xml: malformed XML.*on_error='skip'"):
        load_voc(root, class_names=CLASSES)
    _write_voc_xml(root / "Annotations" / "000001.xml", 64, 64, [("disk", 5, 5, 20, 20), ("disk", 10, 10, 80, 30)])
    with pytest.raises(AnnotationError, match=r"000001\.xml, object 1: box \(xmin=10, ymin=10, xmax=80, ymax=30\) is outside the 64x64 image"):
        load_voc(root, class_names=CLASSES)
    with caplog.at_level(logging.WARNING):
        recs = load_voc(root, class_names=CLASSES, on_error="skip")
    assert len(recs) == 8
    assert [a["bbox"] for a in recs[1]["annotations"]] == [[4.0, 4.0, 20.0, 20.0]]
    assert "skipping the box" in caplog.text and "000001.xml" in caplog.text
    _write_voc_xml(root / "Annotations" / "000001.xml", 64, 64, [("disk", 5, 5, 20, 20)])
    _write_voc_xml(root / "Annotations" / "000002.xml", 64, 64, [("cat", 5, 5, 20, 20)])
    with pytest.raises(AnnotationError, match=r"000002\.xml, object 0: class 'cat' is not among the 3 class names"):
        load_voc(root, class_names=CLASSES)
    _write_voc_xml(root / "Annotations" / "000002.xml", 64, 64, [("disk", 5, 5, 20, 20)])
    (root / "Annotations" / "000003.xml").unlink()
    with pytest.raises(AnnotationError, match=r"000003\.xml: annotation file is missing"):
        load_voc(root, class_names=CLASSES)
    with caplog.at_level(logging.WARNING):
        recs = load_voc(root, class_names=CLASSES, on_error="skip")
    assert "000003" not in [r["image_id"] for r in recs] and len(recs) == 7
    # indices stay positions of the loaded list
    assert [r["prunedata_index"] for r in recs] == list(range(7))
    with pytest.raises(PruneDataError, match="on_error must be 'raise' or 'skip'"):
        load_voc(root, class_names=CLASSES, on_error="ignore")


# --------------------------------------------------------------------------- YOLO
def _small_yolo(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.new("RGB", (80, 60), (90, 90, 90)).save(root / "images" / "a.png")
    Image.new("RGB", (40, 40), (90, 90, 90)).save(root / "images" / "b.jpg")
    (root / "labels" / "a.txt").write_text("1 0.5 0.5 0.25 0.5\n\n0 0.1 0.1 0.2 0.2\n")
    (root / "data.yaml").write_text("names:\n  0: cat\n  1: dog\n")
    return root


def test_yolo_registration_converts_normalised_boxes(tmp_path, yolo_root):
    root = _small_yolo(tmp_path / "y")
    name = register_yolo("t_yolo_small", root, overwrite=True)
    recs = DatasetCatalog.get(name)
    assert [r["image_id"] for r in recs] == ["a", "b"]
    assert MetadataCatalog.get(name).thing_classes == ["cat", "dog"]
    a = recs[0]
    assert (a["width"], a["height"]) == (80, 60)
    assert [x["category_id"] for x in a["annotations"]] == [1, 0]
    np.testing.assert_allclose(a["annotations"][0]["bbox"], [30, 15, 50, 45], atol=1e-9)
    np.testing.assert_allclose(a["annotations"][1]["bbox"], [0, 0, 16, 12], atol=1e-9)
    assert recs[1]["annotations"] == []  # no label file: an image without objects
    # the generated dataset: split folder and classes.txt
    recs = DatasetCatalog.get(register_yolo("t_yolo", yolo_root, split="train", overwrite=True))
    assert len(recs) == 6 and recs[0]["image_id"] == "train/img_0000"
    assert all(len(r["annotations"]) >= 1 for r in recs)


@pytest.mark.parametrize("line, match", [
    ("1 0.5 0.5 0.25", r"a\.txt, line 1: expected 5 fields"),
    ("5 0.5 0.5 0.2 0.2", r"a\.txt, line 1: class '5' is not an index in 0\.\.1"),
    ("0 0.9 0.5 0.4 0.2", r"a\.txt, line 1: box \(cx=0\.9, cy=0\.5, w=0\.4, h=0\.2\) reaches outside the image"),
    ("0 40 30 10 10", r"reaches outside the image .*in pixels instead"),
    ("0 0.5 0.5 0 0.2", r"w, h > 0"),
    ("x 0.5 0.5 0.2 0.2", r"fields must be numbers"),
])
def test_yolo_malformed_lines_name_the_file(tmp_path, line, match, caplog):
    root = _small_yolo(tmp_path / "y")
    (root / "labels" / "a.txt").write_text(line + "\n1 0.5 0.5 0.25 0.5\n")
    with pytest.raises(AnnotationError, match=match):
        load_yolo(root)
    with caplog.at_level(logging.WARNING):
        recs = load_yolo(root, on_error="skip")
    assert len(recs[0]["annotations"]) == 1 and "skipping the box" in caplog.text


def test_yolo_layout_and_class_name_errors(tmp_path):
    with pytest.raises(PruneDataError, match="expected images/ and labels/"):
        register_yolo("t_y_bad", tmp_path)
    root = _small_yolo(tmp_path / "y")
    (root / "data.yaml").unlink()
    with pytest.raises(PruneDataError, match="no class-name list .* classes.txt"):
        register_yolo("t_y_bad", root)
    with pytest.raises(PruneDataError, match="duplicate class names"):
        register_yolo("t_y_bad", root, class_names=["a", "a"])
    Image.new("RGB", (10, 10)).save(root / "images" / "c.png")
    (root / "images" / "c.png").write_bytes(b"not an image")
    with pytest.raises(AnnotationError, match=r"c\.png: cannot read the image"):
        load_yolo(root, class_names=["cat", "dog"])


# --------------------------------------------------------------------------- per-image losses
def _exact_cfg(norm: str):
    """Config where every anchor and proposal is sampled (no randomness) and images are 64 px."""
    cfg = small_faster_rcnn_config(3, image_size=64, norm=norm, proposals=32, fc_dim=64, fpn_channels=32)
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 2048  # > number of anchors of a 64x64 image (1023)
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512  # > proposals + ground truth
    return cfg


def _batch(cfg, name, n):
    loader = build_detection_train_loader(cfg, dataset=DatasetCatalog.get(name)[:n], total_batch_size=n)
    return next(iter(loader))


def test_heads_mode_reproduces_detectron2_batch_losses(voc_root):
    register_voc("t_voc_l", voc_root, class_names=CLASSES, overwrite=True)
    cfg = small_faster_rcnn_config(3, image_size=64)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    data = _batch(cfg, "t_voc_l", 2)
    with EventStorage(0):
        torch.manual_seed(1)
        ref = model(data)
        torch.manual_seed(1)
        out = per_image_losses(model, data, mode="heads")
        micro = per_image_losses(model, data, mode="microbatch")
    assert out.mode == "heads" and out.losses.shape == (2,) and out.losses.requires_grad
    assert set(out.components) == set(ref)
    for k, v in ref.items():  # one batched forward, Detectron2's loss per image: means agree
        assert float(out.components[k].mean()) == pytest.approx(float(v), rel=1e-5, abs=1e-7), k
    assert torch.allclose(out.losses, sum(out.components.values()))
    assert micro.mode == "microbatch" and micro.losses.shape == (2,)
    assert torch.isfinite(micro.losses).all()


def _grads(model):
    return {n: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            for n, p in model.named_parameters()}


def _assert_same(g1, g2):
    scale = max(float(g.abs().max()) for g in g2.values())
    assert scale > 0
    for n in g1:
        err = float((g1[n] - g2[n]).abs().max())
        assert err <= 2e-4 * scale, (n, err, scale)


@pytest.mark.parametrize("norm, mode", [("GN", "heads"), ("BN", "microbatch")])
def test_mask_weight_zero_gives_no_gradient_and_one_gives_the_full_loss(voc_root, norm, mode):
    register_voc("t_voc_g", voc_root, class_names=CLASSES, overwrite=True)
    cfg = _exact_cfg(norm)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    data = _batch(cfg, "t_voc_g", 2)
    ids = batch_indices(data)
    pruner = AdaPruner(8, keep_ratio=0.5, epochs=2, warmup_epochs=1)
    pruner.set_epoch(1)  # past warm-up: weights come from the mask
    with torch.no_grad():
        pruner.mask.zero_()
        pruner.mask[ids[0]] = -1000.0  # weight sigmoid(alpha * m) == 0 exactly
        pruner.mask[ids[1]] = 1000.0   # weight 1 exactly
    assert pruner.weights(ids).tolist() == [0.0, 1.0]
    with EventStorage(0):
        model.zero_grad()
        out = per_image_losses(model, data, mode=mode)
        pruner.loss(ids, out.losses).backward()
        g_weighted = _grads(model)
        # reference: Detectron2's own loss on a batch holding only the weight-1 image
        model.zero_grad()
        alone = model([data[1]])
        (sum(alone.values()) / len(data)).backward()  # AdaPruner gives the model mean_i(w_i * l_i)
        g_alone = _grads(model)
    assert float(out.losses[1]) == pytest.approx(float(sum(alone.values())), rel=1e-4)
    _assert_same(g_weighted, g_alone)
    # and image 0 (weight 0) does carry a loss and gradient of its own, so nothing was zero by accident
    with EventStorage(0):
        model.zero_grad()
        sum(model([data[0]]).values()).backward()
        g0 = _grads(model)
    assert float(out.losses[0]) > 0
    assert max(float((g0[n] - g_alone[n] * len(data)).abs().max()) for n in g0) > 1e-4


def test_per_image_losses_bad_inputs(voc_root):
    register_voc("t_voc_b", voc_root, class_names=CLASSES, overwrite=True)
    cfg = small_faster_rcnn_config(3, image_size=64)
    model = build_model(cfg).train()
    data = _batch(cfg, "t_voc_b", 1)
    with pytest.raises(PruneDataError, match="mode must be one of"):
        per_image_losses(model, data, mode="fast")
    model.eval()
    with pytest.raises(PruneDataError, match="eval mode"):
        per_image_losses(model, data)
    cfg.MODEL.MASK_ON = True
    mask_model = build_model(cfg).train()
    with pytest.raises(PruneDataError, match=r"mode='heads' is not available: mask/keypoint heads are on.*microbatch"):
        per_image_losses(mask_model, data, mode="heads")
    d = dict(data[0])
    del d["prunedata_index"]
    with pytest.raises(PruneDataError, match="has no 'prunedata_index'"):
        batch_indices([d])


# --------------------------------------------------------------------------- AdaPruner training + pruned registration
def test_adapruner_trainer_selection_and_pruned_registration(voc_root, tmp_path):
    name = register_voc("t_voc_tr", voc_root, class_names=CLASSES, overwrite=True)
    cfg = small_faster_rcnn_config(3, train=(name,), image_size=64, max_iter=24, ims_per_batch=2,
                                   output_dir=str(tmp_path / "out"))
    trainer = AdaPrunerTrainer(cfg, keep_ratio=0.75, warmup_epochs=2, mask_lr=3.0)
    assert trainer.pruner.epochs == 6  # 24 iterations x 2 images / 8 images
    trainer.resume_or_load(resume=False)
    trainer.train()
    hist = trainer.pruner.history
    assert [h["warmup"] for h in hist] == [True, True, False, False, False, False]
    assert hist[2]["alpha"] == pytest.approx(0.1) and hist[-1]["alpha"] == pytest.approx(5.0)
    # warm-up trains on every image with weight 1; afterwards the mask moves
    assert hist[-1]["mean_weight"] != pytest.approx(1.0)
    path = trainer.selection_path
    assert path.is_file()
    sel = Selection.load(path)
    recs = DatasetCatalog.get(name)
    assert sel.method == "adapruner" and sel.dataset_size == 8 and sel.num_kept == 6
    assert sel.fingerprint == detection_fingerprint(recs)
    assert sel.extra["image_ids"] == [recs[i]["image_id"] for i in sel.kept]
    assert sel.extra["file_names"] == [f"JPEGImages/{recs[i]['image_id']}.jpg" for i in sel.kept]
    assert sel.metrics["never_seen"] == 0 and sel.params["task"] == "detection"
    raw = json.loads(path.read_text())
    assert raw["kept"] == sel.kept.tolist()

    pruned = register_pruned(name, path, overwrite=True)
    assert pruned == "t_voc_tr_pruned"
    precs = DatasetCatalog.get(pruned)
    assert [r["image_id"] for r in precs] == sel.extra["image_ids"]
    assert [r["prunedata_index"] for r in precs] == list(range(6))
    assert [r["prunedata_base_index"] for r in precs] == sel.kept.tolist()
    assert MetadataCatalog.get(pruned).thing_classes == CLASSES
    # any config trains on it unchanged
    cfg2 = small_faster_rcnn_config(3, train=(pruned,), image_size=64, max_iter=2, output_dir=str(tmp_path / "o2"))
    t2 = DefaultTrainer(cfg2)
    t2.resume_or_load(resume=False)
    t2.train()
    assert t2.iter == 2


def test_simple_trainer_on_yolo_with_microbatches(yolo_root):
    name = register_yolo("t_yolo_st", yolo_root, split="train", overwrite=True)
    recs = DatasetCatalog.get(name)
    cfg = small_faster_rcnn_config(3, train=(name,), image_size=64, max_iter=6)
    model = build_model(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    loader = build_detection_train_loader(cfg)
    pruner = AdaPruner(len(recs), keep_ratio=0.5, epochs=2, warmup_epochs=1)
    trainer = AdaPrunerSimpleTrainer(model, loader, opt, pruner, loss_mode="microbatch")
    trainer.train(0, 6)  # 6 iterations x 2 images = 2 epochs of 6 images
    assert trainer.last_losses.mode == "microbatch"
    assert pruner.epoch == 2 and pruner.finished
    assert int(pruner._seen.sum()) == len(recs)
    sel = detection_selection(pruner, recs, name)
    assert sel.num_kept == 3
    assert sel.extra["file_names"][0].startswith("images/train/img_")
    state = trainer.state_dict()
    assert state["adapruner"]["epoch"] == 2


def test_trainer_and_pruned_registration_errors(voc_root, yolo_root, tmp_path):
    name = register_voc("t_voc_e", voc_root, class_names=CLASSES, overwrite=True)
    yname = register_yolo("t_yolo_e", yolo_root, split="train", overwrite=True)
    cfg = small_faster_rcnn_config(3, train=(name,), image_size=64, max_iter=4)
    with pytest.raises(PruneDataError, match=r"needs SOLVER.MAX_ITER >= 40"):
        AdaPrunerTrainer(cfg, keep_ratio=0.5, epochs=10)
    cfg.DATASETS.TRAIN = (name, yname)
    with pytest.raises(PruneDataError, match="prunes one dataset"):
        AdaPrunerTrainer(cfg, keep_ratio=0.5)
    # a selection of the YOLO dataset does not fit the VOC one
    sel = Selection.from_mask(np.ones(6, dtype=bool), method="x",
                              fingerprint=detection_fingerprint(DatasetCatalog.get(yname)))
    p = sel.save(tmp_path / "y.json")
    with pytest.raises(SelectionMismatchError, match="does not belong to dataset 't_voc_e'.*8 samples|made for a dataset of 6"):
        register_pruned(name, p, overwrite=True)
    # same length, other images: the fingerprint catches it
    sel8 = Selection.from_mask(np.ones(8, dtype=bool), method="x", fingerprint="sha256:" + "0" * 32)
    with pytest.raises(SelectionMismatchError, match="fingerprint"):
        register_pruned(name, sel8, overwrite=True)
    with pytest.raises(PruneDataError, match="is not registered"):
        register_pruned("no_such_dataset", p)
