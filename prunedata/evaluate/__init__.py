"""Judge a selection the way the papers do: one module per protocol.

* :func:`evaluate_selection` — train several architectures (by default including ones that did not
  make the selection) on the selection, on class-balanced random subsets of the same size and on the
  full data, with one recipe and several seeds (Yang et al. 2023, Fig. 3: unseen architectures).
* :func:`proxy_search` — train a ConvNet search space on small proxy sets and on the full data and
  compare the rankings with Spearman's rho (Yang et al. 2023, Table 1).
* :func:`time_to_accuracy` — test accuracy against training wall time, full data against a pruned set
  (Yang et al. 2023, Fig. 4).
* :func:`transfer` — pre-train on a pruned set of one task, fine-tune on another (AdaPruner, Table 2).

Every result is an object with plain attributes, ``table()``, ``to_dict()``, ``to_json()``,
``save(path)`` (atomic) and ``plot(path)`` (PNG, see :mod:`prunedata.plots`). Nothing is downloaded:
the transfer target ``digits_task`` is scikit-learn's bundled digits.
"""
from __future__ import annotations

from ..loop import Recipe
from .architectures import EvaluationResult, evaluate_selection
from .common import DEFAULT_ARCHITECTURES, RunCache, input_kwargs, random_subset, train_and_test
from .proxy_search import ProxySearchResult, class_balanced_by_scores, make_proxies, proxy_search
from .time_curve import TimeCurveResult, time_to_accuracy
from .transfer import TransferResult, class_split, digits_task, transfer, transfer_sets

__all__ = ["Recipe", "RunCache", "input_kwargs", "EvaluationResult", "evaluate_selection", "ProxySearchResult", "proxy_search",
           "make_proxies", "class_balanced_by_scores", "TimeCurveResult", "time_to_accuracy", "TransferResult", "transfer",
           "transfer_sets", "digits_task", "class_split", "random_subset", "train_and_test", "DEFAULT_ARCHITECTURES"]
