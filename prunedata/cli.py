"""prunedata: make training data smaller without making models worse (prune, show, train, evaluate, methods)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from ._io import atomic_write_text, check_writable
from .commands.common import (DATASET_HELP, add_dataset_args, check_device, load_dataset, non_negative_int,
                              positive_int)
from .errors import OutputError, PruneDataError

logger = logging.getLogger("prunedata.cli")


def _model_kw(ds) -> Dict[str, int]:
    """Number of classes and input size of ``ds``, for building the CLI's models."""
    from .catalog import input_shape, num_classes

    c, h, w = input_shape(ds)
    return {"num_classes": num_classes(ds), "in_channels": int(c), "side": int(h)}


def _dataset_params(args: argparse.Namespace) -> Dict[str, Any]:
    """What a selection file records to reload its dataset (``show``, ``train`` and ``evaluate`` read it back)."""
    out: Dict[str, Any] = {"dataset": args.dataset}
    if getattr(args, "root", None):
        out["dataset_root"] = str(Path(args.root).expanduser().resolve())
    if args.max_samples:
        out["max_samples"] = args.max_samples
    return out


# --------------------------------------------------------------------------- subcommands
def cmd_prune(args: argparse.Namespace) -> int:
    from .methods.registry import MethodConfig, select

    if (args.checkpoint or args.resume) and args.method == "random":
        raise PruneDataError("--checkpoint/--resume apply to methods that train a model; random trains none, "
                             "drop them")
    if args.resume and not args.checkpoint:
        raise PruneDataError("--resume continues from a checkpoint: give the file with --checkpoint FILE")
    opts: dict = {}
    for kv in args.option or []:
        if "=" not in kv:
            raise PruneDataError(f"--option expects KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        try:
            opts[k] = json.loads(v)
        except json.JSONDecodeError:
            opts[k] = v
    check_device(args.device)
    report_path = Path(args.report or Path(args.output).with_suffix(".report.txt"))
    check_writable(args.output, "selection file")
    check_writable(report_path, "report")
    if args.checkpoint:  # (random trains no model: refused above)
        check_writable(args.checkpoint, "checkpoint")
        if Path(args.checkpoint).exists() and not args.resume:
            logger.warning("checkpoint %s exists and will be overwritten (add --resume to continue from it)",
                           args.checkpoint)
        opts.setdefault("checkpoint", args.checkpoint)
        opts.setdefault("resume", args.resume)
    ds = load_dataset(args.dataset, train=True, max_samples=args.max_samples, root=args.root, download=args.download)
    cfg = MethodConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                       device=args.device, class_balanced=args.class_balanced, num_workers=args.num_workers,
                       show_progress=not args.no_progress, **_model_kw(ds))
    t0 = time.perf_counter()
    sel = select(args.method, ds, args.keep_ratio, config=cfg, **opts)
    sel.metrics.setdefault("seconds", round(time.perf_counter() - t0, 2))
    for k, v in _dataset_params(args).items():
        sel.params.setdefault(k, v)
    try:
        out = sel.save(args.output)
    except OutputError as e:
        if args.checkpoint and Path(args.checkpoint).exists():
            raise OutputError(f"{e}. The trained state is kept in {args.checkpoint}: rerun with --resume (and the "
                              "same options) to write the selection without training again") from None
        raise
    report = _report(sel, ds)
    atomic_write_text(report_path, report + "\n")
    print(report)
    logger.info("selection -> %s, report -> %s", out, report_path)
    return 0


def _report(sel, ds) -> str:
    from .labels import labels_of

    lines = [sel.summary()]
    lab = labels_of(ds)
    if lab is not None and sel.id_kind == "index":
        classes = getattr(ds, "classes", None)
        lines.append("class balance (kept/total):")
        for c, d in sel.class_counts(lab).items():
            name = classes[c] if classes is not None and c < len(classes) else str(c)
            lines.append(f"  {c:>3} {name:<14} {d['kept']:>7}/{d['total']:<7} {100 * d['kept'] / max(d['total'], 1):6.2f}%")
        if sel.scores is not None and sel.score_name == "mask_logit":
            lines.append("(scores are the final AdaPruner mask logits; pruned = lowest)")
    return "\n".join(lines)


def _from_selection(args: argparse.Namespace, sel) -> None:
    """Fill ``--root``/``--max-samples`` from the selection file when the command line leaves them out."""
    if getattr(args, "root", None) is None and sel.params.get("dataset_root"):
        args.root = sel.params["dataset_root"]
    if getattr(args, "max_samples", None) is None and sel.params.get("max_samples"):
        args.max_samples = int(sel.params["max_samples"])


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from .datasets import PrunedDataset
    from .models import make_model
    from .selection import Selection
    from .training import evaluate, fit

    check_device(args.device)
    if args.output:
        check_writable(args.output, "result file")
    sel = None
    if args.selection:
        sel = Selection.load(args.selection)
        _from_selection(args, sel)
    train = load_dataset(args.dataset, train=True, max_samples=args.max_samples, root=args.root,
                         download=args.download)
    test = load_dataset(args.dataset, train=False, max_samples=args.max_test_samples, root=args.root,
                        download=args.download)
    if sel is not None:
        sel.check(train, strict=not args.no_strict)
        data = PrunedDataset(train, sel, check=False)
        what = f"{len(data)} of {len(train)} samples ({sel.method})"
    else:
        data, what = train, f"all {len(train)} samples"
    torch.manual_seed(args.seed)
    model = make_model(args.model, **_model_kw(train))
    t0 = time.perf_counter()
    fit(model, data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        device=args.device, show_progress=not args.no_progress)
    secs = time.perf_counter() - t0
    res = evaluate(model, test, device=args.device)
    result = {"trained_on": what, "model": args.model, "epochs": args.epochs, "seconds": round(secs, 2),
              "test_accuracy": round(res["accuracy"], 4), "test_loss": round(res["loss"], 4)}
    print(json.dumps(result, indent=2))
    if args.output:
        atomic_write_text(args.output, json.dumps(result, indent=2) + "\n")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .selection import Selection

    sel = Selection.load(args.selection)
    ds = None
    if args.dataset:
        _from_selection(args, sel)
        ds = load_dataset(args.dataset, train=True, max_samples=args.max_samples, root=args.root,
                          download=args.download)
        sel.check(ds)
    if args.json:
        from .labels import labels_of

        d = sel.to_dict()
        lab = labels_of(ds) if ds is not None else None
        if lab is not None:
            d["class_counts"] = sel.class_counts(lab)
        print(json.dumps(d, indent=2, default=str))
    else:
        print(_report(sel, ds) if ds is not None else sel.summary())
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from .methods.registry import available_methods

    for name, desc in available_methods().items():
        print(f"{name:<14} {desc}")
    return 0


# --------------------------------------------------------------------------- parser
def _common_training(p: argparse.ArgumentParser, epochs: int) -> None:
    p.add_argument("--model", default="cnn", help="architecture name (prunedata.models.MODELS), default cnn")
    p.add_argument("--epochs", type=positive_int, default=epochs)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-samples", type=int, default=None,
                   help="use a class-stratified subset of this many training samples (smoke runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="prunedata", description=__doc__)
    parser.add_argument("--version", action="version", version=f"prunedata {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-vv for debug); errors then show their traceback")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prune", help="select samples to keep and write a selection file")
    add_dataset_args(p)
    p.add_argument("--method", default="adapruner", help="selection method (see `prunedata methods`)")
    p.add_argument("--keep-ratio", type=float, default=0.7, help="fraction of samples to keep, in (0, 1)")
    p.add_argument("--class-balanced", action="store_true", help="keep the same fraction of every class")
    p.add_argument("-o", "--output", default="selection.json", help="selection file to write (.gz compresses)")
    p.add_argument("--report", default=None, help="text report path (default: next to the selection)")
    p.add_argument("--checkpoint", default=None, help="checkpoint file of the model a method trains (AdaPruner, influence and baseline proxies), written every epoch")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint (a finished proxy is reused, e.g. for another keep ratio)")
    p.add_argument("--num-workers", type=non_negative_int, default=0)
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="method option, e.g. --option warmup_epochs=1 --option scale=100")
    p.add_argument("--quick", action="store_true", help="smoke run: 6000 samples, 4 epochs")
    _common_training(p, epochs=6)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("train", help="train a fresh model on a selection and report test accuracy")
    add_dataset_args(p)
    p.add_argument("--selection", default=None, help="selection file (omit for the full data)")
    p.add_argument("--max-test-samples", type=int, default=None)
    p.add_argument("--no-strict", action="store_true", help="warn instead of failing on a fingerprint mismatch")
    p.add_argument("-o", "--output", default=None, help="write the result as JSON")
    _common_training(p, epochs=3)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("show", help="summarise a selection file: sizes, class balance, method")
    p.add_argument("selection")
    p.add_argument("--dataset", default=None, help="check against this dataset and show class balance (" +
                   DATASET_HELP + ")")
    add_dataset_args(p, positional=False)
    p.add_argument("--max-samples", type=int, default=None, help="default: the selection's")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("methods", help="list the selection methods")
    p.set_defaults(func=cmd_methods)

    from .commands import evaluate

    evaluate.register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if getattr(args, "quick", False):
        args.max_samples = args.max_samples or 6000
        args.epochs = min(args.epochs, 4)
    try:
        return int(args.func(args) or 0)
    except (PruneDataError, OSError) as e:  # OSError: a file that cannot be read (missing, permission, ...)
        if args.verbose:
            import traceback

            traceback.print_exc(file=sys.stderr)
        msg = str(e) if isinstance(e, PruneDataError) else f"{e.strerror or e}: {e.filename}" if e.filename else str(e)
        print(f"prunedata {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prunedata {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
