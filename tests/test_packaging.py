"""The package as users get it: a built wheel installed without ``-e`` into a fresh virtual environment,
run from a directory outside the checkout; and every optional dependency missing in turn.

The fresh environment sees the already installed dependencies (torch, numpy, ...) through a folder of
links to them, never the checkout or this environment's own (editable) prunedata, and the wheel is
installed with ``pip --no-index``, so its declared dependencies must resolve against them.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import dataformats

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

HIDER = '''
"""Test helper: pretend the top-level modules named in $PRUNEDATA_TEST_HIDE are not installed."""
import importlib.abc
import os
import sys

_HIDDEN = {m for m in os.environ.get("PRUNEDATA_TEST_HIDE", "").split(",") if m}


class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


if _HIDDEN:
    sys.meta_path.insert(0, _Hide())
'''


def _site_dirs():
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [Path(d) for d in dirs if Path(d).is_dir()]


def _link_dependencies(dest: Path) -> None:
    """A folder of links to every installed distribution except prunedata itself."""
    dest.mkdir()
    for d in _site_dirs():
        for entry in d.iterdir():
            name = entry.name.lower()
            if "prunedata" in name or name.startswith("__editable__") or (dest / entry.name).exists():
                continue
            (dest / entry.name).symlink_to(entry)


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for item in ("prunedata", "adapters", "pyproject.toml", "setup.py", "README.md"):
        p = ROOT / item
        (shutil.copytree if p.is_dir() else shutil.copy2)(p, src / item)
    for cache in src.rglob("__pycache__"):
        shutil.rmtree(cache)
    dist = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                    "-w", str(dist)], check=True, cwd=tmp)
    wheel = next(dist.glob("prunedata-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    deps = tmp / "deps"
    _link_dependencies(deps)
    (Path(purelib) / "_prunedata_test_hide.py").write_text(HIDER)
    (Path(purelib) / "zz_test_deps.pth").write_text(f"import site; site.addsitedir({str(deps)!r})\n"
                                                    "import _prunedata_test_hide\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-index", str(wheel)],
                   check=True)
    work = tmp / "work"  # outside the checkout
    work.mkdir()
    return {"wheel": wheel, "venv": venv, "py": py, "bin": venv / "bin", "work": work, "purelib": Path(purelib)}


def run(env, *args, hide: str = "", check: bool = True, timeout: int = 600):
    e = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    e.update(PRUNEDATA_NO_PROGRESS="1", PRUNEDATA_TEST_HIDE=hide, PYTHONDONTWRITEBYTECODE="1")
    cmd = [str(env["bin"] / args[0]), *args[1:]] if args[0] in ("prunedata", "python") else list(args)
    r = subprocess.run(cmd, cwd=env["work"], env=e, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def test_wheel_ships_every_module(wheel_env):
    names = set(zipfile.ZipFile(wheel_env["wheel"]).namelist())
    expected = {f"prunedata/{p.relative_to(ROOT / 'prunedata').as_posix()}" for p in (ROOT / "prunedata").rglob("*.py")}
    expected |= {f"prunedata/adapters/{p.relative_to(ROOT / 'adapters').as_posix()}"
                 for p in (ROOT / "adapters").rglob("*.py")}
    assert "prunedata/commands/evaluate.py" in expected
    assert expected <= names, sorted(expected - names)
    assert not any(n.startswith(("adapters/", "tests/")) for n in names)  # nothing under a generic top-level name


def test_installed_wheel_runs_from_outside_the_checkout(wheel_env):
    where = run(wheel_env, "python", "-c", "import prunedata, prunedata.adapters.classification as c; "
                                           "print(prunedata.__file__); print(c.__file__)").stdout.split()
    assert all(Path(p).is_relative_to(wheel_env["purelib"]) for p in where), where
    assert run(wheel_env, "prunedata", "--version").stdout.strip() == "prunedata 0.1.0"
    assert run(wheel_env, "python", "-m", "prunedata", "--version").stdout.strip() == "prunedata 0.1.0"
    top = run(wheel_env, "prunedata", "--help").stdout
    for cmd in ("prune", "train", "show", "methods", "evaluate"):
        assert cmd in top
        assert "usage: prunedata " + cmd in run(wheel_env, "prunedata", cmd, "--help").stdout
    methods = run(wheel_env, "prunedata", "methods").stdout
    assert all(m in methods for m in ("adapruner", "influence", "random", "herding", "el2n"))
    r = run(wheel_env, "prunedata", "prune", "fashion-mnist", "--quick", "--method", "adapruner", "-o", "fm.json")
    sel = json.loads((wheel_env["work"] / "fm.json").read_text())
    assert sel["dataset_size"] == 6000 and abs(sel["num_kept"] / 6000 - 0.7) <= 0.02 + 1e-9
    assert "class balance" in r.stdout
    assert "Ankle boot" in run(wheel_env, "prunedata", "show", "fm.json", "--dataset", "fashion-mnist").stdout


def test_installed_wheel_on_a_cifar10_folder_and_a_callable(wheel_env):
    work = wheel_env["work"]
    dataformats.make_cifar(work / "c10")
    run(wheel_env, "prunedata", "prune", "cifar10", "--root", "c10", "--method", "adapruner", "--epochs", "2",
        "--batch-size", "16", "--keep-ratio", "0.5", "-o", "c10.json")
    assert "dog" in run(wheel_env, "prunedata", "show", "c10.json", "--dataset", "cifar10").stdout
    r = run(wheel_env, "prunedata", "train", "cifar10", "--selection", "c10.json", "--epochs", "1", "--model", "mlp")
    assert json.loads(r.stdout)["trained_on"].endswith("(adapruner)")
    run(wheel_env, "prunedata", "evaluate", "c10.json", "--architectures", "mlp,linear", "--seeds", "1",
        "--epochs", "1", "-o", "c10.eval.json")
    assert json.loads((work / "c10.eval.json").read_text())["evaluations"][0]["num_kept"] > 0
    (work / "userdata.py").write_text(dataformats.USER_MODULE)
    run(wheel_env, "prunedata", "prune", "userdata.py:make", "--method", "random", "--keep-ratio", "0.5",
        "-o", "u.json")
    run(wheel_env, "prunedata", "show", "u.json", "--dataset", "userdata.py:make")
    r = run(wheel_env, "prunedata", "train", "userdata.py:make", "--selection", "u.json", "--model", "mlp",
            "--epochs", "2", "--batch-size", "16")
    assert json.loads(r.stdout)["trained_on"].startswith("48 of 96")
    run(wheel_env, "prunedata", "evaluate", "u.json", "--architectures", "mlp,linear", "--seeds", "1", "--epochs", "1",
        "-o", "u.eval.json")


@pytest.mark.parametrize("hide,extra,args", [
    ("cvxpy", "solvers", ["python", "-c", "import numpy as np; from prunedata.methods.solver import solve_pruning; "
                                          "solve_pruning(np.eye(4), remove=2, method='exact')"]),
    ("matplotlib", "eval", ["prunedata", "evaluate", "fm.json", "--seeds", "1", "--epochs", "1"]),
    ("scipy", "eval", ["prunedata", "evaluate", "fm.json", "--proxy-search", "--space", "tiny"]),
    ("sklearn", "eval", ["prunedata", "evaluate", "fm.json", "--plots"]),
    ("torchvision", "vision", ["prunedata", "prune", "imgs", "--method", "random", "-o", "x.json"]),
    ("scipy", "vision", ["prunedata", "prune", "svhn", "--root", "svhn", "--method", "random", "-o", "x.json"]),
    ("webdataset", "webdataset", ["python", "-c", "import prunedata.adapters.webdataset"]),
])
def test_each_missing_extra_is_one_line_naming_it(wheel_env, hide, extra, args):
    work = wheel_env["work"]
    if not (work / "fm.json").exists():
        run(wheel_env, "prunedata", "prune", "fashion-mnist", "--max-samples", "200", "--method", "random",
            "-o", "fm.json")
    if not (work / "imgs").exists():
        from PIL import Image
        import numpy as np

        for c in ("a", "b"):
            (work / "imgs" / c).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(work / "imgs" / c / "0.png")
        dataformats.make_svhn(work / "svhn")
    r = run(wheel_env, *args, hide=hide, check=False)
    assert r.returncode != 0
    want = f"pip install 'prunedata[{extra}]'"
    assert want in r.stderr, r.stderr
    if args[0] == "prunedata":  # the command line: exactly one line, no traceback, before any training
        assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr, r.stderr
        assert r.returncode == 2
