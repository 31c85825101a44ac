"""`feddmmr train --engine flower`: the Flower app in Flower's simulation runtime, on one machine.

`flower_supernodes` virtual SuperNodes (Ray actors) each hold a partition of the dataset's users;
the ServerApp runs in a thread of this process, so the RunResult comes straight back.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Callable

from flwr.clientapp.typing import Mod
from flwr.simulation import run_simulation

from feddmmr.config import TrainConfig
from feddmmr.engines.flower.client_app import make_client_app
from feddmmr.engines.flower.server_app import make_server_app
from feddmmr.train import RunResult

# One CPU per virtual node: torch in each actor uses one thread, and nodes train in parallel.
CLIENT_RESOURCES = {"num_cpus": 1, "num_gpus": 0.0}


def run_flower_simulation(config: TrainConfig, *, resume: bool = False, on_round: Callable[[dict], None] | None = None,
                          client_mods: Sequence[Mod] = ()) -> RunResult:
    """`client_mods` wrap every ClientApp handler (Flower mods: DP clipping, fault injection in tests)."""
    results: list[RunResult] = []
    server_app = make_server_app(config, resume=resume, on_round=on_round, deliver=results.append)
    with _flower_logs_once():
        run_simulation(server_app, make_client_app(client_mods), num_supernodes=config.flower_supernodes,
                       backend_config={"client_resources": dict(CLIENT_RESOURCES)})
    if not results:
        raise RuntimeError("the Flower simulation ended without a result; its log above says why")
    return results[0]


@contextlib.contextmanager
def _flower_logs_once() -> Iterator[None]:
    """Flower's logger prints through its own handler at INFO and also passes every record, DEBUG
    included, to the root logger: under `feddmmr train` each line would show twice, with DEBUG."""
    flower = logging.getLogger("flwr")
    propagate, flower.propagate = flower.propagate, False
    try:
        yield
    finally:
        flower.propagate = propagate
