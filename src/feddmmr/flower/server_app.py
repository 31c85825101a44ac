"""The ServerApp: our own run loop (feddmmr.train.train) with the FlowerEngine.

Validation schedule, early stopping, checkpoints, metrics.jsonl and final.json come from the same
code as a local run; only the local updates go to the SuperNodes. FedSASRec's validation and test
stay central: the server reads the dataset named in the run config for them (and for the user ids,
item catalog and candidates it routes, trains and evaluates by); nodes train on their own copies of
their users' data. FedDMMR's memories stay on the nodes, which therefore also evaluate it.

`app` reads its TrainConfig from the Flower run config (`flwr run`, see run_config.py);
`run_flower_simulation` builds one around a TrainConfig and gets the RunResult back.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Sequence

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from feddmmr.callbacks import Callback
from feddmmr.config import TrainConfig
from feddmmr.flower.engine import FlowerEngine
from feddmmr.flower.run_config import from_run_config
from feddmmr.run_setup import load_run_data
from feddmmr.train import RunResult, train

log = logging.getLogger(__name__)


def make_server_app(
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    on_round: Callable[[dict], None] | None = None,
    deliver: Callable[[RunResult], None] | None = None,
    callbacks: Sequence[Callback] = (),
) -> ServerApp:
    """`config` None: take it (and whether to resume) from the run config. `deliver` receives the
    run's result; `callbacks` see the run loop (callbacks.py)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        run_config, resuming = (config, resume) if config is not None else from_run_config(context.run_config)
        result = train_on_grid(grid, run_config, resume=resuming, on_round=on_round, callbacks=callbacks)
        if deliver:
            deliver(result)

    return server


def train_on_grid(
    grid: Grid,
    config: TrainConfig,
    *,
    resume: bool = False,
    on_round: Callable[[dict], None] | None = None,
    callbacks: Sequence[Callback] = (),
) -> RunResult:
    _show_feddmmr_logs()
    config = dataclasses.replace(config, engine="flower")
    # The run loop reads the dataset again in prepare_run; the engine needs the ids before that.
    data = load_run_data(config)
    engine = FlowerEngine(grid, config, data.user_ids, data.item_ids)
    result = train(config, resume=resume, on_round=on_round, engine=engine, callbacks=callbacks)
    log.info(
        "flower run finished: best round %s, test %s (%s)",
        result.final["best_round"],
        result.final["test"],
        result.run_dir,
    )
    return result


def _show_feddmmr_logs() -> None:
    """A ServerApp process started by Flower has no handler for our loggers: give it one, so
    rounds, validations and failed nodes show in its log (`flwr log`, or the simulation's)."""
    package = logging.getLogger("feddmmr")
    if not logging.getLogger().handlers and not package.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)


app = make_server_app()
