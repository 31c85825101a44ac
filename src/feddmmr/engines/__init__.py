"""Local engines: run many clients' local updates of one round.

Every engine follows `Engine` (federated/local.py): the same inputs (the round's context, the global
parameters, the clients' batches, the local settings) and each client's updated parameters fed to
an aggregation rule, so they can be swapped freely. An engine is added by writing its class and
registering a factory under a name (`register_engine`); `--engine NAME` then runs it. Flower's
engine is not made here: `--engine flower` runs the whole run as a Flower app.
"""

from __future__ import annotations

from typing import Callable

import torch

from feddmmr.engines.base import working_copy
from feddmmr.engines.chunking import log_chunks, resolve_chunks
from feddmmr.engines.sequential import SequentialEngine
from feddmmr.engines.vectorized import VectorizedEngine
from feddmmr.federated.local import Engine

# factory(model, chunk_clients=..., chunk_windows=..., num_negatives=..., shared_negatives=...) -> Engine
EngineFactory = Callable[..., Engine]
ENGINES: dict[str, EngineFactory] = {}


def register_engine(name: str, factory: EngineFactory) -> None:
    """Make `factory` the engine `name` (`--engine name`, `make_engine(name, ...)`)."""
    if name == "flower":
        raise ValueError("'flower' names the Flower app, which runs the whole run; pick another name")
    ENGINES[name] = factory


def make_engine(
    name: str,
    model: torch.nn.Module,
    *,
    chunk_clients: str | int = "auto",
    chunk_windows: str | int = "auto",
    num_negatives: int = 4,
    shared_negatives: bool = False,
) -> Engine:
    """`chunk_*`: the vectorised engine's chunk sizes, numbers or "auto" (engines/chunking.py;
    the negatives a target is scored against, `num_negatives`, shared by the step's targets or
    not, enter its memory estimate); the sizes it uses are logged."""
    if name not in ENGINES:
        raise ValueError(
            f"unknown engine {name!r}; expected one of {tuple(ENGINES)} (flower runs through "
            f"`--engine flower`)"
        )
    return ENGINES[name](
        working_copy(model),  # the engine's own: the run's model is never trained in place
        chunk_clients=chunk_clients,
        chunk_windows=chunk_windows,
        num_negatives=num_negatives,
        shared_negatives=shared_negatives,
    )


def _vectorized(
    model: torch.nn.Module, *, chunk_clients, chunk_windows, num_negatives, shared_negatives=False
) -> VectorizedEngine:
    sizes = resolve_chunks(
        chunk_clients, chunk_windows, model, num_negatives, next(model.parameters()).device, shared_negatives
    )
    log_chunks(sizes)
    return VectorizedEngine(model, chunk_clients=sizes.clients, chunk_windows=sizes.windows)


register_engine("vectorized", _vectorized)
register_engine("sequential", lambda model, **options: SequentialEngine(model))

__all__ = [
    "ENGINES",
    "Engine",
    "SequentialEngine",
    "VectorizedEngine",
    "make_engine",
    "register_engine",
]
