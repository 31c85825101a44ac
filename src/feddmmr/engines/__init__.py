"""Local engines: run many clients' local updates of one round.

Both take the same inputs (global parameters, the clients' batches, the local settings) and feed
each client's updated parameters to an aggregation rule, so they can be swapped freely.
"""

from __future__ import annotations

from feddmmr.engines.base import ClientReport, LocalTraining
from feddmmr.engines.sequential import SequentialEngine
from feddmmr.engines.vectorized import VectorizedEngine

ENGINES = ("vectorized", "sequential")


def make_engine(name: str, model, *, chunk_clients: int = 16, chunk_windows: int = 64):
    if name == "vectorized":
        return VectorizedEngine(model, chunk_clients=chunk_clients, chunk_windows=chunk_windows)
    if name == "sequential":
        return SequentialEngine(model)
    raise ValueError(f"unknown engine {name!r}; expected one of {ENGINES} (flower runs through `--engine flower`)")


__all__ = ["ENGINES", "ClientReport", "LocalTraining", "SequentialEngine", "VectorizedEngine", "make_engine"]
