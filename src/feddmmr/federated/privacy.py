"""User-level differential privacy for federated rounds: DP-FedAvg (McMahan et al., ICLR 2018).

- Each round, every eligible client takes part independently with probability q (Poisson
  sampling: the accountant's assumption; the cohort size varies around q * N).
- Each client's update (its trained weights minus the global ones, all tensors together) is
  clipped to L2 norm C where it is computed: in the local engine, or on the Flower node that
  holds the user. Clipped clients count equally: weighting by training targets would let one
  user's data weigh more than C.
- The server adds Gaussian noise N(0, (z C)^2) to the sum of the clipped updates and divides by
  the expected cohort q * N (a fixed denominator, so one user changes the result by at most
  C / (q N)).
- The privacy spent after r rounds, (epsilon, delta), comes from Opacus's RDP accountant for the
  sampled Gaussian mechanism with noise multiplier z and sample rate q.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from feddmmr import streams
from feddmmr.federated.aggregation import FedAvg
from feddmmr.model.sasrec import item_table_name


def clip_updates(
    params: dict[str, torch.Tensor],
    global_params: dict[str, torch.Tensor],
    weights: torch.Tensor,
    clip_norm: float | None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Clients' weights [clients, ...] with each client's update clipped to L2 norm `clip_norm`
    over all tensors, and weight 1 per client; unchanged (with `weights`) when clip_norm is None."""
    if clip_norm is None:
        return params, weights
    deltas = {n: p - global_params[n].unsqueeze(0) for n, p in params.items()}
    clients = len(weights)
    norms = torch.sqrt(sum(d.reshape(clients, -1).double().pow(2).sum(1) for d in deltas.values()))
    factors = (clip_norm / norms.clamp_min(1e-12)).clamp(max=1.0)
    clipped = {
        n: global_params[n].unsqueeze(0) + d * factors.to(d.dtype).view((-1,) + (1,) * (d.dim() - 1))
        for n, d in deltas.items()
    }
    return clipped, torch.ones_like(weights)


def noise_item_rows(
    params: dict[str, torch.Tensor],
    global_params: dict[str, torch.Tensor],
    users: list[int],
    seed: int,
    round_number: int,
    scale: float,
) -> dict[str, torch.Tensor]:
    """Clients' weights [clients, ...] with Gaussian noise on every row of their item-table change
    (`--update-noise`, a defence against a server that reads a user's items off which rows moved,
    docs/SECURITY.md): per coordinate, std `scale` x the root mean square of the client's change over
    the rows it moved. Row 0 (padding) stays; each client's noise is its own stream, so every
    engine draws the same. Unchanged when scale is 0 or the item table is not trained."""
    name = item_table_name(params)
    if not scale or name is None:
        return params
    change = params[name] - global_params[name].unsqueeze(0)  # [clients, rows, d]
    moved = (change != 0).any(-1).sum(-1).clamp_min(1)  # rows each client moved
    rms = torch.sqrt(change.double().pow(2).sum((1, 2)) / (moved * change.shape[-1])).to(change.dtype)
    rows, dim = change.shape[1:]
    noise = torch.stack(
        [
            torch.randn(
                rows - 1,
                dim,
                generator=torch.Generator().manual_seed(
                    streams.torch_seed(seed, streams.UPDATE_NOISE, round_number, user)
                ),
            ).to(change)
            for user in users
        ]
    )
    noisy = params[name].clone()
    noisy[:, 1:] += noise * (scale * rms).view(-1, 1, 1)
    return {**params, name: noisy}


def poisson_sample(eligible: np.ndarray, rate: float, seed: int, round_number: int) -> np.ndarray:
    """The round's clients: each eligible one independently with probability `rate` (sorted)."""
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"client_fraction must be in (0, 1], got {rate}")
    rng = np.random.default_rng([seed, streams.DP_SAMPLING, round_number])
    return np.sort(eligible[rng.random(len(eligible)) < rate])


class DPFedAvg(FedAvg):
    """FedAvg over clipped updates (weight 1 each) plus Gaussian noise, over a fixed denominator."""

    def __init__(
        self,
        global_params: dict[str, torch.Tensor],
        clip_norm: float,
        noise_multiplier: float,
        expected_clients: float,
        generator: torch.Generator,
    ) -> None:
        super().__init__(global_params)
        if expected_clients <= 0:
            raise ValueError(f"expected_clients must be positive, got {expected_clients}")
        self.clip_norm, self.noise_multiplier = clip_norm, noise_multiplier
        self.expected_clients = expected_clients
        self.generator = generator

    def result(self) -> dict[str, torch.Tensor]:
        out = {}
        std = self.noise_multiplier * self.clip_norm
        for name, total in self.sums.items():
            base = self.global_params[name].double()
            clipped_sum = total - self.total_weight * base  # the sum of the clipped updates
            if std > 0:
                noise = torch.randn(base.shape, generator=self.generator, dtype=torch.float64)
                clipped_sum = clipped_sum + std * noise.to(base.device)
            out[name] = (base + clipped_sum / self.expected_clients).to(self.global_params[name].dtype)
        return out


def privacy_spent(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """Epsilon after `rounds` rounds of the sampled Gaussian mechanism; inf without noise."""
    if noise_multiplier <= 0:
        return math.inf
    if rounds == 0:
        return 0.0
    try:
        from opacus.accountants import RDPAccountant
    except ImportError as error:
        raise ImportError("privacy accounting needs Opacus: pip install 'feddmmr[dp]'") from error
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, rounds)]
    return float(accountant.get_epsilon(delta))
