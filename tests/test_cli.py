import json
import subprocess
import sys
from pathlib import Path

import pytest

from prunedata import Selection
from prunedata.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_prune_show_train_end_to_end(tmp_path, capsys):
    out = tmp_path / "sel.json"
    rc = main(["prune", "fashion-mnist", "--method", "adapruner", "--keep-ratio", "0.6", "--max-samples", "1200",
               "--epochs", "3", "--no-progress", "-o", str(out)])
    assert rc == 0
    sel = Selection.load(out)
    assert sel.dataset_size == 1200 and abs(sel.keep_ratio - 0.6) <= 0.02 + 1e-9
    assert sel.params["dataset"] == "fashion-mnist" and sel.params["max_samples"] == 1200
    report = (tmp_path / "sel.report.txt").read_text()
    assert "class balance" in report and "Ankle boot" in report
    capsys.readouterr()
    assert main(["show", str(out), "--dataset", "fashion-mnist"]) == 0
    shown = capsys.readouterr().out
    assert "adapruner" in shown and "Trouser" in shown
    assert main(["show", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_kept"] == sel.num_kept
    res = tmp_path / "train.json"
    assert main(["train", "fashion-mnist", "--selection", str(out), "--max-samples", "1200",
                 "--max-test-samples", "500", "--epochs", "2", "--batch-size", "32", "--no-progress", "-o", str(res)]) == 0
    r = json.loads(res.read_text())
    assert r["trained_on"].startswith(f"{sel.num_kept} of 1200") and 0.3 < r["test_accuracy"] <= 1.0


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["prune", "fashion-mnist", "--keep-ratio", "70", "--max-samples", "100", "-o",
                 str(tmp_path / "x.json")]) == 2
    assert "Did you mean 0.7" in capsys.readouterr().err
    assert main(["prune", "no-such-dataset", "-o", str(tmp_path / "x.json")]) == 2
    assert "unknown dataset" in capsys.readouterr().err
    assert main(["prune", "fashion-mnist", "--method", "nope", "--max-samples", "100",
                 "-o", str(tmp_path / "x.json")]) == 2
    assert "unknown selection method" in capsys.readouterr().err
    assert main(["prune", "fashion-mnist", "--method", "random", "--checkpoint", str(tmp_path / "c.pt"),
                 "--max-samples", "100", "-o", str(tmp_path / "x.json")]) == 2
    assert "random trains none" in capsys.readouterr().err
    sel = Selection(kept=[0, 1], dataset_size=5, method="m", fingerprint="sha256:0")
    p = sel.save(tmp_path / "s.json")
    assert main(["train", "fashion-mnist", "--selection", str(p), "--max-samples", "100"]) == 2
    assert "5 samples" in capsys.readouterr().err
    assert main(["show", str(tmp_path / "missing.json")]) == 2


def test_image_folder_dataset(tmp_path):
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        d = tmp_path / "imgs" / c
        d.mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(d / f"{i}.png")
    out = tmp_path / "sel.json"
    rc = main(["prune", str(tmp_path / "imgs"), "--method", "adapruner", "--keep-ratio", "0.5", "--epochs", "2",
               "--batch-size", "4", "--model", "linear", "--no-progress", "-o", str(out)])
    assert rc == 0
    sel = Selection.load(out)
    assert sel.dataset_size == 12 and sel.num_kept == 6
    from prunedata.adapters.classification import image_folder

    # the fingerprint follows the file list, not the absolute location
    moved = tmp_path / "moved"
    (tmp_path / "imgs").rename(moved)
    Selection.load(out, image_folder(str(moved)))


@pytest.mark.slow
def test_example_runs(tmp_path):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import adapruner_custom_loop as ex
    finally:
        sys.path.pop(0)
    sel, acc = ex.main(["--max-samples", "800", "--epochs", "2", "--num-workers", "0", "--out", str(tmp_path)])
    assert abs(sel.keep_ratio - 0.7) <= 0.02 + 1e-9 and acc > 0.3
    assert (tmp_path / "selection.json").exists() and (tmp_path / "checkpoint.pt").exists()


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "prunedata.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "prune" in r.stdout and "show" in r.stdout
