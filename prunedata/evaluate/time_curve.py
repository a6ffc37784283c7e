"""Test accuracy against training wall time, full data against a pruned set (Yang et al. 2023, Fig. 4)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import PruneDataError
from ..progress import progress
from ..search_space import build_architecture, check_architectures
from .common import Recipe, Result, as_seeds, input_kwargs, mean_std, required_labels, train_and_test


@dataclass
class TimeCurveResult(Result):
    """Test accuracy against training wall time for each training set (Yang et al. 2023, Fig. 4).

    ``curves[name]`` is a list of ``(seconds, epoch, accuracy)`` (seed-averaged); ``final[name]``
    the final accuracy mean/std and ``seconds[name]`` the mean training time; ``time_to_target[name]``
    the first time the curve reaches ``target`` x the reference's (first set's) final accuracy.
    """

    architecture: str
    sizes: Dict[str, int]
    curves: Dict[str, List[Tuple[float, float, float]]]
    final: Dict[str, Dict[str, float]]
    seconds: Dict[str, float]
    recipe: Dict[str, Any]
    seeds: List[int]
    target: float = 0.98
    time_to_target: Dict[str, Optional[float]] = field(default_factory=dict)
    kind = "time_curves"
    plotter = "plot_time_curves"

    def __post_init__(self) -> None:
        ref = next(iter(self.final))
        goal = self.target * self.final[ref]["mean"]
        for name, curve in self.curves.items():
            hit = [t for t, _, a in curve if a >= goal]
            self.time_to_target[name] = float(hit[0]) if hit else None

    def table(self) -> str:
        ref = next(iter(self.final))
        lines = [f"training time, {self.architecture}, {self.recipe['epochs']} epochs, {len(self.seeds)} seeds "
                 f"(reference: {ref})",
                 f"{'training set':<14}{'samples':>8}{'final acc %':>14}{'train s':>9}{'time ratio':>11}"
                 f"{f'to {100 * self.target:.0f}% of ref (s)':>22}"]
        for name in self.final:
            ttt = self.time_to_target[name]
            lines.append(f"{name:<14}{self.sizes[name]:>8}{100 * self.final[name]['mean']:>8.2f}±"
                         f"{100 * self.final[name]['std']:<5.2f}{self.seconds[name]:>9.1f}"
                         f"{self.seconds[name] / self.seconds[ref]:>11.3f}{'never' if ttt is None else f'{ttt:.1f}':>22}")
        return "\n".join(lines)


def time_to_accuracy(train_sets: Mapping[str, Any], test_dataset: Any, *, architecture: str = "cnn",
                     epochs: int = 5, seeds: Union[int, Sequence[int]] = 1, batch_size: int = 128, lr: float = 0.05,
                     device: str = "cpu", evals_per_epoch: int = 2, target: float = 0.98,
                     num_classes: Optional[int] = None, show_progress: bool = True) -> TimeCurveResult:
    """Accuracy-versus-wall-time curves; ``train_sets`` maps names (reference first, e.g. ``"full"``)
    to datasets, e.g. ``{"full": train, "adapruner 30%": PrunedDataset(train, sel)}``."""
    if not train_sets:
        raise PruneDataError("give at least one training set")
    check_architectures([architecture])
    seed_list = as_seeds(seeds)
    recipe = Recipe(epochs=epochs, batch_size=batch_size, lr=lr, device=device)
    first = next(iter(train_sets.values()))
    n_classes = int(num_classes or int(required_labels(first).max()) + 1)
    curves, final, secs, sizes = {}, {}, {}, {}
    for name, data in train_sets.items():
        per_seed = []
        for seed in progress(seed_list, desc=f"time curve {name}", disable=not show_progress):
            torch.manual_seed(seed)
            model = build_architecture(architecture, num_classes=n_classes, **input_kwargs(data))
            per_seed.append(train_and_test(model, data, test_dataset, recipe, seed=seed,
                                           evals_per_epoch=evals_per_epoch, desc=f"{name} seed {seed}"))
        k = min(len(r["curve"]) for r in per_seed)
        curves[name] = [(float(np.mean([r["curve"][i][0] for r in per_seed])), per_seed[0]["curve"][i][1],
                         float(np.mean([r["curve"][i][2] for r in per_seed]))) for i in range(k)]
        m, sd = mean_std([r["accuracy"] for r in per_seed])
        final[name] = {"mean": m, "std": sd}
        secs[name] = float(np.mean([r["seconds"] for r in per_seed]))
        sizes[name] = len(data)
    return TimeCurveResult(architecture=architecture, sizes=sizes, curves=curves, final=final, seconds=secs,
                           recipe=recipe.as_dict(), seeds=seed_list, target=target)
