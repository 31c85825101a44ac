"""Aggregation rules: small streaming reducers over stacked client parameters.

Engines hand over clients in chunks ([clients, ...] tensors) so that a round never holds every
client's copy of the model at once.
"""

from __future__ import annotations

import torch


class FedAvg:
    """Weighted mean of client parameters (weights = training targets, McMahan et al. 2017)."""

    def __init__(self, global_params: dict[str, torch.Tensor]) -> None:
        self.global_params = global_params
        self.sums = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in global_params.items()}
        self.total_weight = 0.0
        self.num_clients = 0

    def add(self, client_params: dict[str, torch.Tensor], weights: torch.Tensor) -> None:
        """client_params[name]: [clients, *shape]; weights: [clients]."""
        # The weighted sum of a chunk in the parameters' precision, accumulated across chunks in
        # float64 so that the order in which engines hand over clients hardly matters.
        for name, stacked in client_params.items():
            self.sums[name] += torch.tensordot(weights.to(stacked.dtype), stacked, dims=1).to(torch.float64)
        self.total_weight += float(weights.double().sum())
        self.num_clients += len(weights)

    def result(self) -> dict[str, torch.Tensor]:
        """The new global parameters; unchanged when no client with training data answered."""
        if self.total_weight <= 0:
            return {name: p.clone() for name, p in self.global_params.items()}
        return {
            name: (total / self.total_weight).to(self.global_params[name].dtype)
            for name, total in self.sums.items()
        }
