"""How many clients, and padded training windows, the vectorised engine trains as one batched step.

A bigger chunk means fewer, larger kernels: on a GPU the round is bound by kernel launches and
Python work, so it wants chunks as large as memory allows; on the CPU larger chunks help less and
cost resident memory. `auto` sizes both from the memory that is free when the run starts (the
device's on CUDA, the machine's on the CPU) with an estimate of what one window and one client
hold during a step; explicit numbers always win. The sizes are powers of two, so that small
changes in free memory rarely change them (with dropout, other chunks draw other random masks).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

MiB = 2**20
# Upper bounds of `auto` (clients, windows). On a GPU, 200 clients / 4,096-8,192 windows were
# 3.5-4x faster than 16 / 64 (an H200); beyond that a chunk is a whole round. On 2 CPU cores the
# default recipe's round took 9.3 s at 16 / 64, 11.7 s at 32 / 128 and 11.5 s at 64 / 256
# (docs/notebook/2026-12-06-benchmarks.md): larger chunks are slower there and cost resident memory.
MAX_CHUNKS = {"cuda": (256, 8192), "cpu": (16, 64)}
# The share of free memory `auto` plans for: the rest is for evaluation, the allocator's slack and
# tensors outside the step (one client's padded batches, the FedDMMR memories).
FREE_SHARE = {"cuda": 0.5, "cpu": 0.25}


@dataclass(frozen=True)
class ChunkSizes:
    clients: int
    windows: int
    why: str  # how they were chosen, for the log


def window_bytes(model: torch.nn.Module, num_negatives: int, shared_negatives: bool = False) -> int:
    """Estimated memory one training window holds during a step: the activations autograd keeps
    (per block, about 24 [L, d] tensors and 6 [heads, L, L] ones, plus embeddings and candidate
    scores), in float32, twice over for the batched gradient's temporaries. Calibrated on the CPU:
    a chunk of 64 more windows (d 128, L 50, 4 negatives) raised the peak RSS by about 300 MiB.
    Negatives shared by a step's targets (or every item, ce-full) are scored as a matrix product:
    a window keeps their scores, [L, 1+N], not their embeddings, [L, 1+N, d]."""
    feddmmr = model.backbone is not model  # FedDMMR: a SASRec backbone beside experts and router
    sasrec = model.backbone.config
    length, dim, heads = sasrec.max_seq_len, sasrec.hidden_dim, sasrec.num_heads
    per_block = 24 * length * dim + 6 * heads * length * length
    candidates = (
        4 * length * (1 + num_negatives) if shared_negatives else 3 * length * (1 + num_negatives) * dim
    )
    floats = sasrec.num_blocks * per_block + 8 * length * dim + candidates
    factor = 4 if feddmmr else 2  # FedDMMR: experts, router, memory reads
    return 4 * factor * floats


def client_bytes(model: torch.nn.Module) -> int:
    """Memory one client holds in a chunk: its copy of the weights, their gradient, Adam's two
    moments and two temporaries of the update, in float32 (an upper bound: a client's item table
    holds only the rows it reads)."""
    return 4 * 6 * sum(p.numel() for p in model.parameters())


def free_memory(device: torch.device) -> int:
    """Bytes free now: on the CUDA device, or the machine's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def floor_power_of_two(value: float, low: int, high: int) -> int:
    size = low
    while size * 2 <= min(value, high):
        size *= 2
    return size


def resolve_chunks(
    clients: str | int,
    windows: str | int,
    model: torch.nn.Module,
    num_negatives: int,
    device: torch.device,
    shared_negatives: bool = False,
) -> ChunkSizes:
    """Chunk sizes from the settings ("auto" or a number each): a quarter of the planned memory
    for the clients' weights and optimiser state, three quarters for the windows' activations."""
    explicit = {
        name: int(value)
        for name, value in (("clients", clients), ("windows", windows))
        if str(value) != "auto"
    }
    if len(explicit) == 2:
        return ChunkSizes(explicit["clients"], explicit["windows"], "as set")
    kind = "cuda" if device.type == "cuda" else "cpu"
    free = free_memory(device)
    budget = free * FREE_SHARE[kind]
    max_clients, max_windows = MAX_CHUNKS[kind]
    per_window, per_client = window_bytes(model, num_negatives, shared_negatives), client_bytes(model)
    sizes = ChunkSizes(
        explicit.get("clients") or floor_power_of_two(budget / 4 / per_client, 1, max_clients),
        explicit.get("windows") or floor_power_of_two(budget * 3 / 4 / per_window, 1, max_windows),
        f"auto: planned for {budget / MiB:,.0f} MiB of {free / MiB:,.0f} MiB free on {device}; "
        f"about {per_window / MiB:.1f} MiB a window, {per_client / MiB:.1f} MiB a client",
    )
    return sizes


def log_chunks(sizes: ChunkSizes) -> None:
    log.info(
        "vectorized engine: chunks of at most %d clients / %d windows (%s)",
        sizes.clients,
        sizes.windows,
        sizes.why,
    )
