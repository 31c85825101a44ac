"""Aggregation rules: small streaming reducers over stacked client parameters.

Engines hand over clients in chunks ([clients, ...] tensors) so that a round never holds every
client's copy of the model at once. An aggregation rule is the one place that knows how updates
combine: it follows `Aggregator`, and is added by writing its class and registering it
(`register_aggregator`); `--aggregator NAME` then uses it. The server optimiser (FedAdam, FedAvgM)
steps along the change the aggregate proposes, whatever rule made it. User-level DP replaces the
rule with DP-FedAvg (federated/privacy.py).
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch


class Aggregator(Protocol):
    """Takes the clients' updated parameters chunk by chunk, then proposes the new global ones."""

    dropped: int  # client updates left out (not finite)

    def add(self, client_params: dict[str, torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
        """client_params[name]: [clients, *shape]; weights: [clients] (training targets). Returns
        which clients were kept [clients]."""
        ...

    def result(self) -> dict[str, torch.Tensor]:
        """The proposed global parameters (the current ones when no client was kept)."""
        ...


# factory(global_params, robust_fraction) -> a fresh Aggregator for one round; robust_fraction is
# the share of clients a robust rule is built to withstand (federated/robust.py)
AggregatorFactory = Callable[[dict[str, torch.Tensor], float], Aggregator]
AGGREGATORS: dict[str, AggregatorFactory] = {}


def register_aggregator(name: str, factory: AggregatorFactory) -> None:
    """Make `factory` the aggregation rule `name` (`--aggregator name`)."""
    AGGREGATORS[name] = factory


def make_aggregator(
    name: str, global_params: dict[str, torch.Tensor], robust_fraction: float = 0.1
) -> Aggregator:
    if name not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {name!r}; expected one of {tuple(AGGREGATORS)}")
    return AGGREGATORS[name](global_params, robust_fraction)


class FedAvg:
    """Weighted mean of client parameters (weights = training targets, McMahan et al. 2017)."""

    def __init__(self, global_params: dict[str, torch.Tensor]) -> None:
        self.global_params = global_params
        self.sums = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in global_params.items()}
        self.total_weight = 0.0
        self.num_clients = 0
        self.dropped = 0  # client updates left out for a non-finite value

    def add(self, client_params: dict[str, torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
        """client_params[name]: [clients, *shape]; weights: [clients]. Returns which clients were
        kept [clients]: an update with a non-finite value is dropped (it would make the global
        model non-finite) and counted in `dropped`."""
        clients = len(weights)
        # A sum is non-finite exactly when some element is (or when the values are near float32's
        # limit, which no update should reach either): one read of each tensor.
        sums = torch.stack(
            [stacked.reshape(clients, -1).sum(1, dtype=torch.float32) for stacked in client_params.values()]
        )
        finite = torch.isfinite(sums.sum(0))
        everyone = bool(finite.all())  # once per chunk: copies the values only when some must go
        weights = weights if everyone else torch.where(finite, weights, 0.0)
        # The weighted sum of a chunk in the parameters' precision, accumulated across chunks in
        # float64 so that the order in which engines hand over clients hardly matters.
        for name, stacked in client_params.items():
            kept = (
                stacked
                if everyone
                else torch.where(finite.view((-1,) + (1,) * (stacked.dim() - 1)), stacked, 0.0)
            )
            self.sums[name] += torch.tensordot(weights.to(stacked.dtype), kept, dims=1).to(torch.float64)
        self.total_weight += float(weights.double().sum())
        kept_clients = int(finite.sum())
        self.num_clients += kept_clients
        self.dropped += clients - kept_clients
        return finite

    def result(self) -> dict[str, torch.Tensor]:
        """The new global parameters; unchanged when no client with training data answered."""
        if self.total_weight <= 0:
            return {name: p.clone() for name, p in self.global_params.items()}
        return {
            name: (total / self.total_weight).to(self.global_params[name].dtype)
            for name, total in self.sums.items()
        }


register_aggregator("fedavg", lambda global_params, robust_fraction: FedAvg(global_params))


class ServerAdam:
    """FedAdam (Reddi et al., ICLR 2021): the server treats the change FedAvg proposes as a
    pseudo-gradient and takes an Adam step along it, instead of adopting the average outright.

    Its moments persist across rounds (and checkpoints); `tau` is the paper's adaptivity
    constant (Adam's epsilon). It must be small next to the changes: with SGD clients these are
    a learning rate times a mean gradient, often ~1e-3 per weight.
    """

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.99), tau: float = 1e-6) -> None:
        self.lr, self.betas, self.tau = lr, betas, tau
        self.exp_avg: dict[str, torch.Tensor] = {}
        self.exp_avg_sq: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def step(
        self, global_params: dict[str, torch.Tensor], averaged: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        beta1, beta2 = self.betas
        out = {}
        for name, average in averaged.items():
            delta = average - global_params[name]
            m = self.exp_avg.setdefault(name, torch.zeros_like(delta))
            v = self.exp_avg_sq.setdefault(name, torch.zeros_like(delta))
            m.mul_(beta1).add_(delta, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(delta, delta, value=1 - beta2)
            out[name] = global_params[name] + self.lr * m / (v.sqrt() + self.tau)
        return out

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"exp_avg": dict(self.exp_avg), "exp_avg_sq": dict(self.exp_avg_sq)}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        self.exp_avg = {n: t.clone() for n, t in state["exp_avg"].items()}
        self.exp_avg_sq = {n: t.clone() for n, t in state["exp_avg_sq"].items()}


class ServerMomentum:
    """FedAvgM (Hsu et al. 2019): the server keeps a momentum buffer of the changes FedAvg
    proposes and moves by `lr` times it. With momentum 0 and lr 1 it is plain FedAvg; lr > 1
    extrapolates the average, which clients that partly cancel each other out make too short.
    """

    def __init__(self, lr: float, momentum: float = 0.9) -> None:
        self.lr, self.momentum = lr, momentum
        self.buffer: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def step(
        self, global_params: dict[str, torch.Tensor], averaged: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        out = {}
        for name, average in averaged.items():
            delta = average - global_params[name]
            buffer = self.buffer.get(name)
            buffer = delta.clone() if buffer is None else buffer.mul_(self.momentum).add_(delta)
            self.buffer[name] = buffer
            out[name] = global_params[name] + self.lr * buffer
        return out

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"buffer": dict(self.buffer)}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        self.buffer = {n: t.clone() for n, t in state["buffer"].items()}
