"""Local engines: run many clients' local updates of one round.

Both take the same inputs (global parameters, the clients' batches, the local settings) and feed
each client's updated parameters to an aggregation rule, so they can be swapped freely.
"""

from __future__ import annotations

from feddmmr.engines.base import ClientReport, LocalTraining
from feddmmr.engines.chunking import log_chunks, resolve_chunks
from feddmmr.engines.sequential import SequentialEngine
from feddmmr.engines.vectorized import VectorizedEngine

ENGINES = ("vectorized", "sequential")


def make_engine(name: str, model, *, chunk_clients: str | int = "auto", chunk_windows: str | int = "auto",
                num_negatives: int = 4):
    """`chunk_*`: the vectorised engine's chunk sizes, numbers or "auto" (engines/chunking.py;
    `num_negatives` enters its memory estimate); the sizes it uses are logged."""
    if name == "vectorized":
        device = next(model.parameters()).device
        sizes = resolve_chunks(chunk_clients, chunk_windows, model, num_negatives, device)
        log_chunks(sizes)
        return VectorizedEngine(model, chunk_clients=sizes.clients, chunk_windows=sizes.windows)
    if name == "sequential":
        return SequentialEngine(model)
    raise ValueError(f"unknown engine {name!r}; expected one of {ENGINES} (flower runs through `--engine flower`)")


__all__ = ["ENGINES", "ClientReport", "LocalTraining", "SequentialEngine", "VectorizedEngine", "make_engine"]
