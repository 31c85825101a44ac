"""The reference engine: one client after another, a plain PyTorch module and a torch.optim optimiser.

It is the readable definition of a local update that the
vectorised engine must reproduce, and the path for debugging a single client.
"""

from __future__ import annotations

import logging

import torch

from feddmmr.engines.base import guarded_step
from feddmmr.federated.adam import TORCH_OPTIMIZERS
from feddmmr.federated.batches import ClientBatches
from feddmmr.federated.local import (
    Aggregate,
    ClientReport,
    LocalTraining,
    Progress,
    RoundContext,
    RoundResult,
)
from feddmmr.model.losses import TrainBatch, every_item
from feddmmr.model.sasrec import item_table_name

log = logging.getLogger(__name__)


class SequentialEngine:
    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def train(
        self,
        context: RoundContext,
        global_params: dict[str, torch.Tensor],
        clients: list[ClientBatches],
        local: LocalTraining,
        aggregate: Aggregate,
        progress: Progress | None = None,
    ) -> RoundResult:
        model = self.model
        device = next(model.parameters()).device
        memory = local.memory
        trainable = [p for n, p in model.named_parameters() if n not in local.frozen]
        for name, p in model.named_parameters():
            p.requires_grad_(name not in local.frozen)
        reports, round_scales = [], []
        catalogue = (
            every_item(global_params[item_table_name(global_params)]) if local.loss == "ce-full" else None
        )
        for client in clients:
            model.load_state_dict(global_params, strict=False)
            model.train()
            optimizer = TORCH_OPTIMIZERS[local.optimizer](
                trainable, lr=local.learning_rate, weight_decay=local.weight_decay
            )
            losses, skipped = [], 0
            scales = local.precision.client_scales(1, device)
            round_scales.append(scales)
            if memory is not None:
                slots = memory.select([client.user], device)
                positives = torch.from_numpy(client.time_ordered_targets()).to(device)
            for step in range(client.num_steps):
                inputs = torch.from_numpy(client.inputs[step]).to(device)
                candidates = torch.from_numpy(client.candidates[step]).to(device)
                if not (candidates[..., 0] > 0).any():
                    continue
                shared = (
                    catalogue if client.shared is None else torch.from_numpy(client.shared[step]).to(device)
                )
                slots_now = () if memory is None else tuple(m[0] for m in memory.retrieve(slots))
                with local.precision.autocast():
                    objective, loss = model.loss(
                        TrainBatch(inputs, candidates, shared, slots_now), local.objective
                    )
                if (
                    memory is not None
                ):  # the positives happened whatever this step's fate: the memory takes them
                    slots = memory.update(slots, positives[step : step + 1])
                if not guarded_step(objective, trainable, optimizer, scales):
                    skipped += 1
                    continue
                losses.append(float(loss.detach()))
            if memory is not None:
                memory.scatter([client.user], slots)
            params = {
                n: p.detach().unsqueeze(0).clone()
                for n, p in model.named_parameters()
                if n not in local.frozen
            }
            weights = torch.tensor([float(client.num_targets)], device=device)
            kept = bool(
                aggregate(*local.postprocess(params, global_params, weights, [client.user], context))[0]
            )
            reports.append(
                ClientReport(
                    client.user, sum(losses) / max(len(losses), 1), len(losses), skipped, dropped=not kept
                )
            )
            if progress:
                progress(1)
        model.load_state_dict(global_params, strict=False)  # leave the model as it was handed over
        for p in model.parameters():
            p.requires_grad_(True)
        return RoundResult(reports, tuple(round_scales))
