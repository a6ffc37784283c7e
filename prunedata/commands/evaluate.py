"""``prunedata evaluate SELECTION...``: judge selections the way the papers do.

Modes (combine freely; with none given, ``--architectures-eval`` runs):

* architectures (default): each architecture on the selection, on class-balanced random subsets of the
  same size and on the full data, several seeds; mean ± std, difference to random, seconds per run.
* ``--proxy-search``: a ConvNet search space trained on each selection used as a proxy set (and on a
  random one of the same size, and on proxies made with ``--proxy-methods``) and on the full data;
  Spearman's rho, the picked net's full-data accuracy and the time ratio (Yang et al. 2023, Table 1).
* ``--time-curves``: accuracy versus training wall time, full data against each selection (Fig. 4).
* ``--transfer digits|fmnist-split``: pre-train on the selection / random / full, fine-tune on
  scikit-learn's digits or on the other five Fashion-MNIST classes (AdaPruner, Table 2).
* ``--plots``: 2-D feature embedding with kept and pruned samples, kept per class, AdaPruner's
  mask-weight histogram over epochs.

Writes one JSON report (``-o``) and PNGs next to it.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from .._io import atomic_write_text, check_writable
from .._optional import require
from ..errors import PruneDataError
from .common import add_dataset_args, check_device, load_dataset, positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="judge selections: unseen architectures vs random, proxy-set "
                              "architecture search, training time, transfer, pictures",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("selections", nargs="*", metavar="SELECTION", help="selection file(s) made by `prunedata prune`")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=None, help="dataset the selections were made on (default: the one named in "
                   "the selection file)")
    add_dataset_args(g, positional=False)
    g.add_argument("--max-samples", type=int, default=None, help="training subset size (default: the selection's)")
    g.add_argument("--max-test-samples", type=int, default=None, help="use only this many test samples (stratified)")
    g = p.add_argument_group("modes")
    g.add_argument("--architectures-eval", dest="arch_eval", action="store_true",
                   help="architectures vs random vs full (the default when no mode is given)")
    g.add_argument("--proxy-search", action="store_true", help="proxy-set architecture search (Spearman's rho)")
    g.add_argument("--time-curves", action="store_true", help="accuracy vs training wall time, full vs selection")
    g.add_argument("--transfer", choices=("digits", "fmnist-split"), default=None,
                   help="pre-train on the selection, fine-tune on sklearn digits or the other 5 Fashion-MNIST classes")
    g.add_argument("--plots", action="store_true", help="embedding with kept/pruned, per-class counts, mask histogram")
    g = p.add_argument_group("training recipe")
    g.add_argument("--architectures", default="cnn,cnn_bn,mlp",
                   help="comma-separated architecture names (prunedata.models or convnet-d2-w16-relu-batch-max)")
    g.add_argument("--model", default="cnn", help="architecture for --time-curves, --transfer and --plots")
    g.add_argument("--seeds", type=int, default=3, help="seeds per configuration")
    g.add_argument("--epochs", type=positive_int, default=3)
    g.add_argument("--batch-size", type=positive_int, default=128)
    g.add_argument("--lr", type=float, default=0.05)
    g.add_argument("--device", default="cpu")
    g.add_argument("--no-full", action="store_true", help="skip the full-data runs")
    g.add_argument("--cache-dir", default=None, help="keep every training run in this folder (one JSON per run) and "
                   "reuse runs with the same dataset, architecture, recipe, seed and samples: random and full-data "
                   "runs are shared between evaluations, and an interrupted evaluation resumes")
    g = p.add_argument_group("proxy search")
    g.add_argument("--space", default="cpu", help="search space: cpu (32 nets), paper (720), tiny (4)")
    g.add_argument("--proxy-epochs", type=int, default=10)
    g.add_argument("--full-epochs", type=int, default=3)
    g.add_argument("--proxy-methods", default="", help="also make proxies with these methods, e.g. "
                   "random,herding,forgetting,influence,adapruner")
    g.add_argument("--per-class", type=int, default=100, help="samples per class of --proxy-methods proxies")
    g.add_argument("--top-k", type=int, default=10)
    g = p.add_argument_group("transfer")
    g.add_argument("--pretrain-epochs", type=int, default=None, help="default: --epochs")
    g.add_argument("--finetune-epochs", type=int, default=10)
    g.add_argument("--finetune-per-class", type=int, default=50,
                   help="fmnist-split: target training samples per class")
    g = p.add_argument_group("pictures")
    g.add_argument("--embedding", choices=("pca", "tsne"), default="pca")
    g.add_argument("--max-points", type=int, default=3000)
    p.add_argument("-o", "--output", default=None, help="JSON report (default: <first selection>.eval.json); PNGs "
                   "are written next to it")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)


def _dataset_args(sels, args) -> Dict[str, Any]:
    """The dataset, subset size and root: the command line's, else the ones all selection files agree on."""
    def given_or_agreed(given, key):
        agreed = {s.params.get(key) for s in sels}
        return given if given is not None else agreed.pop() if len(agreed) == 1 else None

    out = {"name": given_or_agreed(args.dataset, "dataset"),
           "max_samples": given_or_agreed(args.max_samples, "max_samples")}
    if out["name"] is None and not sels:
        raise PruneDataError("--proxy-methods without a selection file needs --dataset")
    if out["name"] is None:
        raise PruneDataError("the selection files do not say which dataset they were made on (or disagree); "
                             "give --dataset NAME")
    root = given_or_agreed(args.root, "dataset_root")
    if root is not None:
        out["root"] = root
    return out


def _require_before_training(args: argparse.Namespace) -> None:
    """Optional dependencies of the chosen modes, checked before any model is trained."""
    require("matplotlib", extra="eval", purpose="the evaluation's figures")
    if args.proxy_search:
        require("scipy.stats", extra="eval", purpose="--proxy-search (Spearman's rho)")
    if args.transfer == "digits" or args.plots:
        require("sklearn", extra="eval", purpose="--transfer digits" if args.transfer == "digits" else "--plots")


def _unique_name(name: str, taken: Dict[str, Any]) -> str:
    out, k = name, 2
    while out in taken:
        out, k = f"{name}-{k}", k + 1
    return out


@dataclass
class _Run:
    """What every mode of one ``prunedata evaluate`` call works on, and what it adds to the report."""

    args: argparse.Namespace
    train: Any
    test: Any
    sels: List[Any]
    data_args: Dict[str, Any]
    stem: str
    report: Dict[str, Any]
    show: bool
    lines: List[str] = field(default_factory=list)
    pngs: List[str] = field(default_factory=list)


def _load(args: argparse.Namespace) -> _Run:
    """Check the arguments, load the selections and the data; nothing is trained yet."""
    import torch

    from ..search_space import check_architectures, search_space
    from ..selection import Selection

    if args.threads:
        torch.set_num_threads(args.threads)
    check_architectures(args.architectures.split(","))
    check_architectures([args.model])
    if args.proxy_search:
        search_space(args.space)  # unknown space name: fail before any training
    if not args.selections and not (args.proxy_search and _proxy_methods(args)):
        raise PruneDataError("give at least one SELECTION file (or --proxy-search with --proxy-methods and --dataset)")
    _require_before_training(args)
    check_device(args.device)
    sels = [Selection.load(p) for p in args.selections]
    data_args = _dataset_args(sels, args)
    train = load_dataset(data_args["name"], train=True, max_samples=data_args["max_samples"], root=data_args.get("root"),
                         download=args.download)
    test = load_dataset(data_args["name"], train=False, max_samples=args.max_test_samples, root=data_args.get("root"),
                        download=args.download)
    for path, s in zip(args.selections, sels):
        try:
            s.check(train)
        except PruneDataError as e:
            raise type(e)(f"{path}: {e} (evaluated against {data_args['name']!r} with "
                          f"max_samples={data_args['max_samples']})") from None
    out = Path(args.output or Path(args.selections[0] if args.selections else "proxy").with_suffix(".eval.json"))
    stem = str(out.with_suffix("")) if out.suffix == ".json" else str(out)
    check_writable(out, "evaluation report")  # fail before the training runs, not after them
    report: Dict[str, Any] = {"command": "prunedata evaluate", "dataset": data_args, "selections": args.selections,
                              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "_out": str(out)}
    return _Run(args, train, test, sels, data_args, stem, report, show=not args.no_progress)


def _proxy_methods(args: argparse.Namespace) -> List[str]:
    return [m.strip() for m in args.proxy_methods.split(",") if m.strip()]


def _architectures(run: _Run) -> None:
    from .. import evaluate as ev
    from ..plots import plot_evaluation

    a = run.args
    cache: Dict[Any, Any] = {}
    results = []
    for s in run.sels:
        r = ev.evaluate_selection(s, run.train, run.test, architectures=a.architectures.split(","), seeds=a.seeds,
                                  epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, device=a.device,
                                  include_full=not a.no_full, cache=cache, show_progress=run.show,
                                  dataset_name=run.data_args["name"], cache_dir=a.cache_dir)
        results.append(r)
        run.lines += [r.table(), ""]
    run.report["evaluations"] = [r.to_dict() for r in results]
    run.pngs.append(str(plot_evaluation(results, run.stem + ".eval.png")))


def _proxy_search(run: _Run) -> None:
    from .. import evaluate as ev
    from ..labels import labels_of

    a = run.args
    proxies: Dict[str, Any] = {}
    for s in run.sels:
        proxies[_unique_name(s.method, proxies)] = s
    skipped: Dict[str, str] = {}
    if _proxy_methods(a):
        from ..methods.registry import MethodConfig

        n_classes = int(labels_of(run.train).max()) + 1
        cfg = MethodConfig(model=a.model, num_classes=n_classes, epochs=a.epochs, seed=0, device=a.device,
                           class_balanced=True, show_progress=run.show, **ev.input_kwargs(run.train))
        made, skipped = ev.make_proxies(_proxy_methods(a), run.train, per_class=a.per_class, config=cfg)
        for m, s in made.items():
            proxies[_unique_name(m, proxies)] = s
        for m, why in skipped.items():
            run.lines.append(f"proxy method {m} skipped: {why}")
    ps = ev.proxy_search(proxies, run.train, run.test, space=a.space, proxy_epochs=a.proxy_epochs,
                         full_epochs=a.full_epochs, lr=a.lr, device=a.device, top_k=a.top_k, show_progress=run.show)
    run.report["proxy_search"] = dict(ps.to_dict(), skipped=skipped)
    run.lines += [ps.table(), ""]
    run.pngs.append(str(ps.plot(run.stem + ".proxy.png")))


def _time_curves(run: _Run) -> None:
    from .. import evaluate as ev
    from ..datasets import PrunedDataset

    a = run.args
    sets = {"full": run.train}
    for s in run.sels:
        sets[_unique_name(f"{s.method} {100 * s.keep_ratio:.0f}%", sets)] = PrunedDataset(run.train, s, check=False)
    tc = ev.time_to_accuracy(sets, run.test, architecture=a.model, epochs=a.epochs, seeds=a.seeds,
                             batch_size=a.batch_size, lr=a.lr, device=a.device, show_progress=run.show)
    run.report["time_curves"] = tc.to_dict()
    run.lines += [tc.table(), ""]
    run.pngs.append(str(tc.plot(run.stem + ".time.png")))


def _transfer(run: _Run) -> None:
    import numpy as np

    from .. import evaluate as ev
    from ..labels import labels_of

    a, train, test = run.args, run.train, run.test
    run.report["transfer"] = []
    for s in run.sels:
        if a.transfer == "digits":
            pre = ev.transfer_sets(s, train)
            tgt_train, tgt_test = ev.digits_task()
            src_test, target_name = test, "sklearn digits"
        else:
            lab = labels_of(train)
            classes = np.unique(lab)
            if classes.size < 4:
                raise PruneDataError("fmnist-split transfer needs a dataset with at least 4 classes")
            src_c, tgt_c = classes[: classes.size // 2].tolist(), classes[classes.size // 2:].tolist()
            pre = ev.transfer_sets(s, train, source_classes=src_c)
            tgt_train = ev.class_split(train, tgt_c, per_class=min(a.finetune_per_class,
                                                                   int(np.bincount(lab)[tgt_c].min())))
            tgt_test, src_test = ev.class_split(test, tgt_c), ev.class_split(test, src_c)
            target_name = f"classes {tgt_c}"
        tr = ev.transfer(pre, tgt_train, tgt_test, architecture=a.model, source_test=src_test,
                         pretrain_epochs=a.pretrain_epochs or a.epochs, finetune_epochs=a.finetune_epochs,
                         seeds=a.seeds, batch_size=64, lr=a.lr, device=a.device, target_name=target_name,
                         show_progress=run.show)
        run.report["transfer"].append(tr.to_dict())
        run.lines += [tr.table(), ""]
        run.pngs.append(str(tr.plot(run.stem + f".transfer-{s.method}.png")))


def _plots(run: _Run) -> None:
    import torch

    from .. import evaluate as ev
    from .. import plots
    from ..labels import labels_of
    from ..search_space import build_architecture

    a, train = run.args, run.train
    lab = labels_of(train)
    torch.manual_seed(0)
    model = build_architecture(a.model, num_classes=int(lab.max()) + 1, **ev.input_kwargs(train))
    rec = ev.Recipe(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, device=a.device)
    ev.train_and_test(model, train, run.test, rec, seed=0, show_progress=run.show, desc="embedding model (full data)")
    feats = plots.penultimate_features(model, train, device=a.device)
    names = getattr(train, "classes", None)
    for s in run.sels:
        run.pngs.append(str(plots.plot_embedding(run.stem + f".embedding-{s.method}.png", feats, lab, s.mask,
                                                 method=a.embedding, max_points=a.max_points, class_names=names,
                                                 title=f"{s.method}: {s.num_kept} of {s.dataset_size} kept; features "
                                                       f"of a {a.model} trained on the full data")))
        run.pngs.append(str(plots.plot_class_counts(run.stem + f".class-counts-{s.method}.png", s, lab,
                                                    class_names=names)))
        if s.extra.get("history"):
            run.pngs.append(str(plots.plot_mask_histogram(run.stem + f".mask-hist-{s.method}.png", s)))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluate.common import json_default

    run = _load(args)
    modes = [(args.arch_eval or not (args.proxy_search or args.time_curves or args.transfer or args.plots),
              _architectures), (args.proxy_search, _proxy_search), (args.time_curves, _time_curves),
             (args.transfer, _transfer), (args.plots, _plots)]
    for wanted, mode in modes:
        if wanted:
            mode(run)
    out = Path(run.report.pop("_out"))
    run.report["pngs"] = run.pngs
    atomic_write_text(out, json.dumps(run.report, indent=2, default=json_default) + "\n")
    print("\n".join(run.lines).rstrip())
    print(f"report: {out}")
    for p in run.pngs:
        print(f"figure: {p}")
    return 0
