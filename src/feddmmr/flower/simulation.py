"""`feddmmr train --engine flower`: the Flower app in Flower's simulation runtime, on one machine.

`flower_supernodes` virtual SuperNodes (Ray actors) each hold a partition of the dataset's users;
the ServerApp runs in a thread of this process, so the RunResult comes straight back.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from typing import Callable

from flwr.clientapp.typing import Mod
from flwr.simulation import run_simulation

from feddmmr.callbacks import Callback
from feddmmr.config import TrainConfig
from feddmmr.flower.client_app import make_client_app
from feddmmr.flower.server_app import make_server_app
from feddmmr.train import RunResult

# One CPU per virtual node: torch in each actor uses one thread, and nodes train in parallel.
CLIENT_RESOURCES = {"num_cpus": 1, "num_gpus": 0.0}


def run_flower_simulation(
    config: TrainConfig,
    *,
    resume: bool = False,
    on_round: Callable[[dict], None] | None = None,
    client_mods: Sequence[Mod] = (),
    callbacks: Sequence[Callback] = (),
) -> RunResult:
    """`client_mods` wrap every ClientApp handler (Flower mods: DP clipping, fault injection in
    tests); `callbacks` see the run loop (callbacks.py)."""
    results: list[RunResult] = []
    server_app = make_server_app(
        config, resume=resume, on_round=on_round, deliver=results.append, callbacks=callbacks
    )
    with _flower_logs_once():
        run_simulation(
            server_app,
            make_client_app(client_mods),
            num_supernodes=config.flower_supernodes,
            backend_config={"client_resources": dict(CLIENT_RESOURCES)},
        )
    if not results:
        raise RuntimeError("the Flower simulation ended without a result; its log above says why")
    return results[0]


def _not_the_simulation_deprecation(record: logging.LogRecord) -> bool:
    """Flower deprecates `run_simulation` in favour of `flwr run`, which needs a SuperLink process
    (docs/DEPLOY.md runs the app that way). In-process is what `feddmmr train --engine flower`
    offers: no process to start or stop, and the RunResult comes straight back. So its notice,
    which the user cannot act on, is left out; every other Flower line stays."""
    return "`run_simulation` function is deprecated" not in record.getMessage()


@contextlib.contextmanager
def _flower_logs_once() -> Iterator[None]:
    """Flower's logger prints through its own handler at INFO and also passes every record, DEBUG
    included, to the root logger: under `feddmmr train` each line would show twice, with DEBUG."""
    flower = logging.getLogger("flwr")
    propagate, flower.propagate = flower.propagate, False
    flower.addFilter(_not_the_simulation_deprecation)
    try:
        with warnings.catch_warnings():
            # Ray's FutureWarning that a later Ray will stop hiding GPUs from actors with num_gpus=0:
            # today's behaviour (nodes on the CPU, CLIENT_RESOURCES) is the one wanted, and the tip
            # (an environment variable that would let every node see the GPU) is not for our users.
            warnings.filterwarnings(
                "ignore", message="Tip: In future versions of Ray", category=FutureWarning
            )
            yield
    finally:
        flower.removeFilter(_not_the_simulation_deprecation)
        flower.propagate = propagate
