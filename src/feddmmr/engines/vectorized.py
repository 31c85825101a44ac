"""The vectorised engine: many clients' local training as one batched computation.

Each client's copy of the parameters is a slice of tensors with a leading client dimension;
`torch.func.vmap(grad(...))` computes every client's gradient of its own loss in one pass over
the batched model, and `BatchedAdam` (or `BatchedSGD`) applies one independent optimiser per client. Clients are
processed in chunks (sorted by size so that little padding is computed) to bound memory.

Without weight decay, an item-embedding row that a client's round never reads gets a zero
gradient, so Adam leaves it exactly unchanged. Each client then trains a compact table of only the
rows it reads (its items and sampled negatives, typically a fraction of the catalogue) and the
rows are written back before aggregation: the same result at a fraction of the optimiser work
and memory, and a cost that follows the data rather than the catalogue size. With weight decay
every row moves, so the full table is trained.

FedDMMR: each client's retrieved memory slots [clients, K] are two more vmapped inputs, and the
chunk's memories are updated after every step with that step's positives in time order (the
same calls as the sequential engine). Frozen parameters (staged training) are shared by every
client (not vmapped), get no gradient and are not handed to aggregation.
"""

from __future__ import annotations

import logging

import torch
from torch.func import functional_call, grad_and_value, vmap

from feddmmr.federated.adam import LOCAL_OPTIMIZERS
from feddmmr.federated.batches import ClientBatches, stack_batches, stack_positives
from feddmmr.federated.local import (
    Aggregate,
    ClientReport,
    LocalTraining,
    Progress,
    RoundContext,
    RoundResult,
)
from feddmmr.model.losses import Objective, TrainBatch, every_item
from feddmmr.model.sasrec import ITEM_TABLE, item_table_name

log = logging.getLogger(__name__)


def plan_chunks(
    clients: list[ClientBatches], max_clients: int, max_windows: int
) -> list[list[ClientBatches]]:
    """Group clients of similar size; a chunk holds at most `max_clients` clients and
    `max_windows` padded windows per step. Within equal steps and rows, by training targets: clients
    of one short window each (sparse data) share a chunk with others of about their length, so that
    `stack_batches` can cut the chunk's common leading padding."""
    ordered = sorted(
        clients, key=lambda c: (c.inputs.shape[0], c.inputs.shape[1], c.num_targets), reverse=True
    )
    chunks: list[list[ClientBatches]] = []
    for client in ordered:
        if chunks:
            chunk = chunks[-1]
            rows = chunk[0].inputs.shape[1]  # the largest in the chunk: sorted descending
            if len(chunk) < max_clients and (len(chunk) + 1) * rows <= max_windows:
                chunk.append(client)
                continue
        chunks.append([client])
    return chunks


def expand_rows(
    global_table: torch.Tensor, item_rows: torch.Tensor, local_tables: torch.Tensor
) -> torch.Tensor:
    """Full [clients, items, d] tables: the global table with each client's trained rows written in."""
    full = global_table.unsqueeze(0).repeat(len(item_rows), 1, 1)
    index = item_rows.unsqueeze(-1).expand(-1, -1, global_table.shape[-1])
    return full.scatter_(1, index, local_tables)


class ModelLoss(torch.nn.Module):
    """The model's `loss` as a module call, which `functional_call` runs with each client's
    weights (named `model.<parameter>`)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: TrainBatch, objective: Objective) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.loss(batch, objective)


class VectorizedEngine:
    def __init__(self, model: torch.nn.Module, *, chunk_clients: int = 16, chunk_windows: int = 64) -> None:
        self.model = model
        self.chunk_clients = chunk_clients
        self.chunk_windows = chunk_windows

    def _gradient_fn(self, local: LocalTraining, shared_dim: int | None, memory_slots: int):
        """Per-client (gradients, (scaled objective, next-item loss)) of the trained parameters,
        through the model's `loss`; `frozen` parameters are shared by all clients and get no
        gradient; `scale` is each client's loss scale; `shared` the step's shared negatives, per
        client (`shared_dim` 0), every item for all clients (None), or None; then the client's
        `memory_slots` memory tensors (FedDMMR's items and mask; none for FedSASRec)."""
        loss_of = ModelLoss(self.model)

        def client_loss(params, frozen, inputs, candidates, scale, shared, *memory):
            weights = {f"model.{name}": p for name, p in {**params, **frozen}.items()}
            with local.precision.autocast():
                objective, loss = functional_call(
                    loss_of, weights, (TrainBatch(inputs, candidates, shared, memory), local.objective)
                )
            return objective * scale, loss

        return vmap(
            grad_and_value(client_loss, has_aux=True),
            in_dims=(0, None, 0, 0, 0, shared_dim) + (0,) * memory_slots,
            randomness="different",
        )

    def train(
        self,
        context: RoundContext,
        global_params: dict[str, torch.Tensor],
        clients: list[ClientBatches],
        local: LocalTraining,
        aggregate: Aggregate,
        progress: Progress | None = None,
    ) -> RoundResult:
        self.model.train()
        device = next(self.model.parameters()).device
        catalogue = None
        if local.loss == "ce-full":
            catalogue = every_item(global_params[item_table_name(global_params)])
        memory = local.memory
        gradient_fn = self._gradient_fn(
            local, 0 if clients and clients[0].shared is not None else None, 0 if memory is None else 2
        )
        reports = []
        frozen = {n: p.detach() for n, p in global_params.items() if n in local.frozen}
        trained = {n: p for n, p in global_params.items() if n not in local.frozen}
        # ce-full reads (and moves) every row: nothing to gain from a compact table.
        compact = local.weight_decay == 0 and ITEM_TABLE in trained and catalogue is None
        round_scales = []
        for chunk in plan_chunks(clients, self.chunk_clients, self.chunk_windows):
            batch = stack_batches(chunk, device, compact_items=compact)
            size = len(chunk)
            params = {
                n: p.detach().unsqueeze(0).repeat(size, *([1] * p.dim()))
                for n, p in trained.items()
                if not (compact and n == ITEM_TABLE)
            }
            if compact:
                params[ITEM_TABLE] = global_params[ITEM_TABLE].detach()[batch.item_rows]
            optimizer = LOCAL_OPTIMIZERS[local.optimizer](
                params, lr=local.learning_rate, weight_decay=local.weight_decay
            )
            scales = local.precision.client_scales(size, device)
            loss_sum = torch.zeros(size, dtype=torch.float64, device=device)
            steps_trained = torch.zeros(size, dtype=torch.int64, device=device)
            skipped = torch.zeros(size, dtype=torch.int64, device=device)
            if memory is not None:
                slots = memory.select(batch.users, device)
                positives = stack_positives(chunk, device)
            # Which clients step is a device mask: off the CPU, FedSASRec's loop never waits for the
            # host (the FedDMMR memory update still reads its block sizes there).
            for step in range(batch.inputs.shape[1]):
                active = batch.active[:, step]
                scale = scales.scale
                step_inputs = (
                    params,
                    frozen,
                    batch.inputs[:, step],
                    batch.candidates[:, step],
                    scale,
                    catalogue if batch.shared is None else batch.shared[:, step],
                )
                if memory is None:
                    grads, (objectives, losses) = gradient_fn(*step_inputs)
                else:
                    grads, (objectives, losses) = gradient_fn(*step_inputs, *memory.retrieve(slots))
                    slots = memory.update(slots, positives[:, step])
                # One reduction per tensor: a sum is non-finite exactly when some element is
                # (inf, -inf or NaN), and it reads each gradient once instead of four times.
                gradient_sums = sum(g.reshape(size, -1).sum(1) for g in grads.values())
                finite = torch.isfinite(losses + objectives + gradient_sums)
                non_finite = active & ~finite
                step_active = active & finite
                if local.precision.scaling:
                    grads = {n: g / scale.view((-1,) + (1,) * (g.dim() - 1)) for n, g in grads.items()}
                scales.update(non_finite, step_active)
                optimizer.step(grads, step_active)
                loss_sum += torch.where(step_active, losses.double(), 0.0)
                steps_trained += step_active.long()
                skipped += non_finite.long()
            round_scales.append(scales)
            if memory is not None:
                memory.scatter(batch.users, slots)
            if compact:
                params[ITEM_TABLE] = expand_rows(
                    global_params[ITEM_TABLE].detach(), batch.item_rows, params[ITEM_TABLE]
                )
            kept = aggregate(
                *local.postprocess(params, trained, batch.weights, batch.users, context)
            ).tolist()
            loss_sum, steps_trained, skipped = loss_sum.tolist(), steps_trained.tolist(), skipped.tolist()
            for i, user in enumerate(batch.users):
                reports.append(
                    ClientReport(
                        user,
                        loss_sum[i] / max(steps_trained[i], 1),
                        steps_trained[i],
                        skipped[i],
                        dropped=not kept[i],
                    )
                )
            if progress:
                progress(size)
        return RoundResult(reports, tuple(round_scales))
