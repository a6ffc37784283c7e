"""Issue 17: resume is a property of every long job, and a checkpoint of another recipe is refused
with the differing field named (CLI prune for every method, train_adapruner, proxies)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from prunedata import Selection
from prunedata.adapruner import AdaPruner
from prunedata.cli import main
from prunedata.errors import CheckpointError, RecipeMismatchError
from prunedata.training import train_adapruner

BASE = ["fashion-mnist", "--max-samples", "240", "--epochs", "2", "--model", "linear", "--batch-size", "32",
        "--no-progress"]


def _prune(tmp_path, *extra, out="sel.json"):
    return main(["prune", *BASE, "-o", str(tmp_path / out), *extra])


def test_cli_prune_resume_refuses_a_checkpoint_of_another_recipe(tmp_path, capsys):
    ck = str(tmp_path / "ck.pt")
    assert _prune(tmp_path, "--checkpoint", ck, "--keep-ratio", "0.5") == 0
    first = Selection.load(tmp_path / "sel.json")
    capsys.readouterr()
    cases = [
        (["--lr", "0.1"], "lr: 0.05 in the checkpoint, 0.1 now"),
        (["--seed", "3"], "seed: 0 in the checkpoint, 3 now"),
        (["--keep-ratio", "0.6"], "pruner.keep_ratio: 0.5 in the checkpoint, 0.6 now"),
        (["--model", "mlp"], "model: 'Linear"),
        (["--option", "scale=50"], "pruner.scale: 100.0 in the checkpoint, 50.0 now"),
        (["--method", "el2n"], "written by adapruner, not by this el2n proxy"),
        (["--method", "influence"], "written by adapruner, not by this influence proxy"),
    ]
    for extra, msg in cases:
        args = ["--checkpoint", ck, "--resume", "--keep-ratio", "0.5", *extra]
        # argparse keeps the last --keep-ratio / --model, so the case's value wins
        assert _prune(tmp_path, *args, out="other.json") == 2, extra
        err = capsys.readouterr().err
        assert msg in err, (extra, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "other.json").exists()
    # --batch-size 64 against a batch-32 checkpoint: refused, not mixed
    assert main(["prune", *BASE, "--batch-size", "64", "--checkpoint", ck, "--resume", "--keep-ratio", "0.5",
                 "-o", str(tmp_path / "other.json")]) == 2
    assert "batch_size: 32 in the checkpoint, 64 now" in capsys.readouterr().err
    # the same recipe resumes (a finished run is reused): same selection
    assert _prune(tmp_path, "--checkpoint", ck, "--resume", "--keep-ratio", "0.5", out="again.json") == 0
    assert np.array_equal(Selection.load(tmp_path / "again.json").kept, first.kept)


def test_cli_proxy_checkpoint_of_another_method_is_refused(tmp_path, capsys):
    ck = str(tmp_path / "ck.pt")
    assert _prune(tmp_path, "--method", "el2n", "--checkpoint", ck, "--keep-ratio", "0.5") == 0
    capsys.readouterr()
    assert _prune(tmp_path, "--method", "adapruner", "--checkpoint", ck, "--resume", "--keep-ratio", "0.5") == 2
    err = capsys.readouterr().err
    assert "written by el2n proxy 1/1, not by this adapruner" in err and "Traceback" not in err
    assert _prune(tmp_path, "--method", "influence", "--checkpoint", ck, "--resume", "--keep-ratio", "0.5") == 2
    assert "written by el2n proxy 1/1, not by this influence proxy" in capsys.readouterr().err


def _toy(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g))


def test_train_adapruner_refuses_another_model_or_optimizer_and_names_the_field(tmp_path):
    ds, ck = _toy(), tmp_path / "ck.pt"
    torch.manual_seed(0)
    train_adapruner(torch.nn.Linear(5, 3), ds, AdaPruner(60, 0.5, epochs=3, warmup_epochs=1), batch_size=20,
                    checkpoint=ck, stop_after_epoch=1, show_progress=False)
    wider = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    with pytest.raises(RecipeMismatchError, match="model: 'Linear' in the checkpoint, 'Sequential' now"):
        train_adapruner(wider, ds, AdaPruner(60, 0.5, epochs=3, warmup_epochs=1), batch_size=20, checkpoint=ck,
                        resume=True, show_progress=False)
    m = torch.nn.Linear(5, 3)
    adam = torch.optim.Adam(m.parameters(), lr=0.05)
    with pytest.raises(RecipeMismatchError, match="optimizer: 'SGD' in the checkpoint, 'Adam' now"):
        train_adapruner(m, ds, AdaPruner(60, 0.5, epochs=3, warmup_epochs=1), optimizer=adam, batch_size=20,
                        checkpoint=ck, resume=True, show_progress=False)
    with pytest.raises(RecipeMismatchError, match="samples: 60 in the checkpoint, 30 now"):
        train_adapruner(torch.nn.Linear(5, 3), _toy(30), AdaPruner(30, 0.5, epochs=3, warmup_epochs=1),
                        batch_size=20, checkpoint=ck, resume=True, show_progress=False)
    # a damaged checkpoint is one sentence, a CheckpointError
    ck.write_bytes(ck.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read checkpoint .* delete it"):
        train_adapruner(torch.nn.Linear(5, 3), ds, AdaPruner(60, 0.5, epochs=3, warmup_epochs=1), batch_size=20,
                        checkpoint=ck, resume=True, show_progress=False)


def test_checkpoint_that_does_not_fit_the_model_is_a_checkpoint_error(tmp_path):
    from prunedata.checkpoint import load_checkpoint, save_checkpoint

    ck = tmp_path / "ck.pt"
    save_checkpoint(ck, epoch=1, model=torch.nn.Linear(5, 3))
    with pytest.raises(CheckpointError, match="does not fit this run"):
        load_checkpoint(ck, model=torch.nn.Linear(5, 4))
    with pytest.raises(CheckpointError, match="does not fit this run .*'sampler'"):
        from prunedata.adapruner import AdaPrunerSampler

        load_checkpoint(ck, sampler=AdaPrunerSampler(AdaPruner(60, 0.5, epochs=3, warmup_epochs=1)))


# --------------------------------------------------------------------------- one sentence, not a traceback
def _one_line_error(capsys, argv, *needles):
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err


def test_bad_command_lines_are_one_sentence(tmp_path, capsys):
    out = str(tmp_path / "s.json")
    for bad in ("0", "-3"):
        with pytest.raises(SystemExit) as ei:
            main(["prune", "fashion-mnist", "--batch-size", bad, "-o", out])
        assert ei.value.code == 2 and "--batch-size: must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "fashion-mnist", "--epochs", "0"])
    assert "--epochs: must be at least 1" in capsys.readouterr().err
    if not torch.cuda.is_available():
        _one_line_error(capsys, ["prune", "fashion-mnist", "--device", "cuda", "--max-samples", "100", "-o", out],
                        "--device cuda: no CUDA GPU is visible")
        _one_line_error(capsys, ["train", "fashion-mnist", "--device", "cuda:1", "--max-samples", "100"],
                        "no CUDA GPU is visible")
    _one_line_error(capsys, ["prune", "fashion-mnist", "--device", "tpu", "--max-samples", "100", "-o", out], "tpu")
    for method in ("adapruner", "influence", "el2n"):
        _one_line_error(capsys, ["prune", "fashion-mnist", "--method", method, "--option", "bogus=1",
                                 "--max-samples", "100", "--epochs", "1", "-o", out],
                        f"method {method!r} has no option(s) bogus", "its options are")
    _one_line_error(capsys, ["prune", "fashion-mnist", "--resume", "--max-samples", "100", "-o", out],
                    "--resume continues from a checkpoint: give the file with --checkpoint")
    assert not Path(out).exists()


def test_selection_with_bad_dataset_size_and_missing_test_split_are_one_sentence(tmp_path, capsys):
    import json as _json

    p = tmp_path / "s.json"
    d = _json.loads(Selection(kept=[0, 1], dataset_size=5, method="m").to_json())
    for v in ("five", float("nan"), None):
        d["dataset_size"] = v
        p.write_text(_json.dumps(d))
        _one_line_error(capsys, ["show", str(p)], "dataset_size must be a whole number")
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 60 * i, dtype=np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    err = _one_line_error(capsys, ["train", str(tmp_path / "imgs"), "--epochs", "1", "--model", "linear",
                                   "--no-progress"], "has no test/ folder")
    import re

    from prunedata.cli import build_parser

    # every option the hint names exists
    known = {s for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions
             for s in a.option_strings}
    assert all(o in known for o in re.findall(r"--[a-z][a-z-]+", err)), err


def test_bad_option_values_and_unreadable_files_are_one_sentence(tmp_path, capsys):
    out = str(tmp_path / "s.json")
    _one_line_error(capsys, ["prune", "fashion-mnist", "--option", "warmup_epochs=\"two\"", "--max-samples", "100",
                             "--epochs", "1", "-o", out], "bad value among the adapruner options", "warmup_epochs")
    (tmp_path / "dir.json").mkdir()
    _one_line_error(capsys, ["show", str(tmp_path / "dir.json")], "dir.json")
    from prunedata.errors import OptionError, PruneDataError
    from prunedata.identity import IndexedDataset

    with pytest.raises(OptionError, match="map-style dataset") as ei:
        IndexedDataset(iter([1, 2]))
    assert isinstance(ei.value, TypeError) and isinstance(ei.value, PruneDataError)  # old callers still catch it
