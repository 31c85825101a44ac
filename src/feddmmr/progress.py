"""Progress bars of a run: one over its rounds (elapsed, estimate) and one over the current round's
clients. rich draws them only in a terminal (elsewhere the log's line per round says the same)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@contextmanager
def round_bars(
    num_rounds: int, console: Console | None = None
) -> Iterator[tuple[Callable, Callable[[dict], None]]]:
    """(progress_factory, on_round) for `train`: the first opens a round's client bar, the second
    advances the round bar and closes that round's client bar."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        transient=True,
    ) as bars:
        rounds = bars.add_task("rounds", total=num_rounds)
        clients: dict[int, int] = {}

        def progress_factory(round_number: int, total: int) -> Callable[[int], None]:
            bars.update(rounds, completed=round_number - 1)  # a resumed run starts part-way
            clients[round_number] = bars.add_task(f"round {round_number} clients", total=total)
            return lambda n: bars.advance(clients[round_number], n)

        def on_round(record: dict) -> None:
            bars.update(rounds, completed=record["round"])
            if record["round"] in clients:
                bars.remove_task(clients.pop(record["round"]))

        yield progress_factory, on_round
