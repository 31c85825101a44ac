"""Plug-ins that change each client's update where it is computed, before it leaves the client
(pfl-research's `Postprocessor.postprocess_one_user`): noise on the item-table change
(`--update-noise`) and DP's clipping (`--dp-clip-norm`). `LocalTraining.postprocessors` names the
chain; an engine applies it to every chunk of updated clients without knowing what it does, and a
Flower node applies the same chain to its users' updates. The server's side of DP (the noise on
the sum) is the aggregation rule's (federated/privacy.py, DPFedAvg)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch

from feddmmr.federated.privacy import clip_updates, noise_item_rows

if TYPE_CHECKING:
    from feddmmr.federated.local import RoundContext

Params = dict[str, torch.Tensor]


class ClientPostprocessor(Protocol):
    """(clients' parameters [clients, ...] per name, their weights [clients]) -> the same, changed."""

    # True when every client leaves with weight 1 (clipping): the Flower transport checks replies by it
    equal_weights: ClassVar[bool]

    def __call__(
        self,
        params: Params,
        global_params: Params,
        weights: torch.Tensor,
        users: list[int],
        context: RoundContext,
    ) -> tuple[Params, torch.Tensor]: ...


@dataclass(frozen=True)
class NoiseItemRows:
    """Gaussian noise on each client's item-table change, at the scale of the change itself."""

    scale: float
    equal_weights: ClassVar[bool] = False

    def __call__(self, params, global_params, weights, users, context):
        return noise_item_rows(params, global_params, users, context.seed, context.round, self.scale), weights


@dataclass(frozen=True)
class ClipUpdates:
    """DP-FedAvg's client side: each client's whole update clipped to L2 norm `clip_norm`, weight 1."""

    clip_norm: float
    equal_weights: ClassVar[bool] = True

    def __call__(self, params, global_params, weights, users, context):
        return clip_updates(params, global_params, weights, self.clip_norm)


def client_postprocessors(clip_norm: float | None, update_noise: float) -> tuple[ClientPostprocessor, ...]:
    """The chain a run's settings ask for: the noise first, then the clipping, so that the clipped
    update (noise included) is what DP accounts for."""
    chain: list[ClientPostprocessor] = []
    if update_noise:
        chain.append(NoiseItemRows(update_noise))
    if clip_norm is not None:
        chain.append(ClipUpdates(clip_norm))
    return tuple(chain)
