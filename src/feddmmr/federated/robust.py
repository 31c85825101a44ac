"""Byzantine-robust aggregation rules (`--aggregator norm-bound|median|trimmed-mean|krum|row-bound`).

Unlike FedAvg they need every client's update at once: each rule keeps the round's changes
(client - global, flattened to one vector per client, [clients, D] in float32) and combines them
in `result`. `robust_fraction` (β) is the share of clients a rule is built to withstand.

- norm-bound: each change is scaled down to at most the round's median change norm, then the
  FedAvg-weighted mean (Sun et al. 2019, with the bound set by the round itself);
- median: the coordinate-wise median (Yin et al. 2018), unweighted;
- trimmed-mean: per coordinate, the β·n largest and smallest values are dropped and the rest
  averaged (Yin et al. 2018), unweighted;
- krum: Multi-Krum (Blanchard et al. 2017): f = β·n; each change is scored by its summed squared
  distance to its n - f - 2 nearest others, and the n - f best-scored are FedAvg-averaged.
- row-bound: norm-bound per item: each change of each item-embedding row is scaled down to at
  most the round's median, over clients, of their largest row change, then the FedAvg-weighted
  mean. A client's update moves the rows of the items it read; an update that puts its norm on
  a few rows (to promote them) is cut to what an ordinary client moves one row by.

With the Flower engine the server sees one update per node (its users' mean), so the rules act on
nodes, not users.
"""

from __future__ import annotations

import math

import torch

from feddmmr.federated.aggregation import register_aggregator
from feddmmr.model.sasrec import ITEM_TABLE, item_table_name


class RobustRule:
    """Collects the round's finite changes; `combine` (per rule) turns them into one change."""

    def __init__(self, global_params: dict[str, torch.Tensor], robust_fraction: float = 0.1) -> None:
        self.global_params = global_params
        self.robust_fraction = robust_fraction
        self.origin = torch.cat([p.detach().reshape(-1).float() for p in global_params.values()])
        self.changes: list[torch.Tensor] = []
        self.weights: list[torch.Tensor] = []
        self.dropped = 0  # client updates left out (not finite)

    def add(self, client_params: dict[str, torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
        clients = len(weights)
        flat = torch.cat(
            [client_params[name].reshape(clients, -1).float() for name in self.global_params], dim=1
        )
        finite = torch.isfinite(flat).all(dim=1)
        self.changes.append(flat[finite] - self.origin)
        self.weights.append(weights[finite].float())
        self.dropped += clients - int(finite.sum())
        return finite

    def result(self) -> dict[str, torch.Tensor]:
        changes = torch.cat(self.changes) if self.changes else self.origin.new_zeros((0, len(self.origin)))
        weights = torch.cat(self.weights) if self.weights else self.origin.new_zeros(0)
        if len(changes) == 0 or float(weights.sum()) <= 0:
            return {name: p.clone() for name, p in self.global_params.items()}
        combined = self.origin + self.combine(changes, weights)
        out, start = {}, 0
        for name, p in self.global_params.items():
            out[name] = combined[start : start + p.numel()].reshape(p.shape).to(p.dtype)
            start += p.numel()
        return out

    def combine(self, changes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def weighted_mean(changes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (weights @ changes) / weights.sum()


class NormBound(RobustRule):
    def combine(self, changes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        norms = changes.norm(dim=1)
        bound = norms.median()
        scale = torch.clamp(bound / norms.clamp_min(1e-12), max=1.0)
        return weighted_mean(changes * scale[:, None], weights)


class RowBound(RobustRule):
    def combine(self, changes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        names = list(self.global_params)
        name = item_table_name(names)
        if name is None:
            raise ValueError(
                f"aggregator=row-bound bounds the rows of the item table ({ITEM_TABLE}), which this "
                f"round does not train"
            )
        start = sum(self.global_params[n].numel() for n in names[: names.index(name)])
        rows, dim = self.global_params[name].shape
        table = changes[:, start : start + rows * dim].view(len(changes), rows, dim)
        row_norms = table.norm(dim=2)  # [clients, rows]
        bound = row_norms.max(dim=1).values.median()
        scale = torch.clamp(bound / row_norms.clamp_min(1e-12), max=1.0)
        table.mul_(scale[:, :, None])  # a view into `changes`, the round's own copy: no second copy of it
        return weighted_mean(changes, weights)


class Median(RobustRule):
    def combine(self, changes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        ordered = changes.sort(dim=0).values
        n = len(ordered)
        return (
            ordered[(n - 1) // 2] + ordered[n // 2]
        ) / 2  # the mean of the two middle values when n is even


class TrimmedMean(RobustRule):
    def combine(self, changes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        n = len(changes)
        cut = min(int(math.floor(self.robust_fraction * n)), (n - 1) // 2)
        return changes.sort(dim=0).values[cut : n - cut].mean(dim=0)


class MultiKrum(RobustRule):
    def combine(self, changes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        n = len(changes)
        f = int(math.floor(self.robust_fraction * n))
        neighbours = max(n - f - 2, 1)
        if n <= 2:
            return weighted_mean(changes, weights)
        squared = changes.pow(2).sum(dim=1)
        distances = (squared[:, None] + squared[None, :] - 2 * changes @ changes.T).clamp_min(0)
        distances.fill_diagonal_(float("inf"))
        scores = distances.topk(neighbours, dim=1, largest=False).values.sum(dim=1)
        chosen = scores.topk(n - f, largest=False).indices
        self.selected = chosen  # which clients the last combine kept (for tests and diagnostics)
        return weighted_mean(changes[chosen], weights[chosen])


register_aggregator("norm-bound", NormBound)
register_aggregator("median", Median)
register_aggregator("trimmed-mean", TrimmedMean)
register_aggregator("krum", MultiKrum)
register_aggregator("row-bound", RowBound)
