"""The tables of `feddmmr report`: runs' final figures, one row per run, or with `--over-seeds` one
row per setting (runs whose settings differ only by `--seed`, and by where and how they ran) as
mean ± standard error over its seeds, the form every claim in docs/RESULTS.md takes. Printed as
aligned text, Markdown or CSV (`--format`); in CSV a figure over seeds has a mean and an se column."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass

from feddmmr.config_files import saved_config
from feddmmr.errors import InputError
from feddmmr.report import RunRecords

FORMATS = ("text", "markdown", "csv")
# Settings that do not change what a run computes, or change only its seed: runs that differ in
# nothing else are one setting.
NOT_THE_SETTING = frozenset({"seed", "run_dir", "threads", "device", "tracker"})
# The test under both protocols: 1:N sampled candidates and full ranking (final.json's `test` is the
# run's own, `test_full` / `test_sampled` the other; "-" for a run written before it had both).
RUN_COLUMNS = (
    "best round",
    "val HR@10",
    "test 1:N HR@10",
    "NDCG@10",
    "test full HR@10",
    "NDCG@10",
    "rounds",
    "stopped early",
    "train s/round",
)
GROUPS = ("cold", "warm")
GROUP_COLUMNS = tuple(
    f"{'new' if g == 'cold' else 'trained'} {protocol} {metric}"
    for g in GROUPS
    for protocol in ("1:N", "full")
    for metric in ("HR@10", "NDCG@10")
)
SEED_COLUMNS = (
    "val HR@10",
    "test 1:N HR@10",
    "test 1:N NDCG@10",
    "test full HR@10",
    "test full NDCG@10",
    "best round",
    "train s/round",
)


@dataclass(frozen=True)
class Spread:
    """A figure over seeds: its mean and standard error (None for one seed)."""

    mean: float
    se: float | None

    @classmethod
    def of(cls, values: list[float]) -> "Spread":
        mean = sum(values) / len(values)
        if len(values) < 2:
            return cls(mean, None)
        variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
        return cls(mean, math.sqrt(variance / len(values)))

    def text(self) -> str:
        return f"{self.mean:.4f}" if self.se is None else f"{self.mean:.4f} ± {self.se:.4f}"


def both_protocols(final: dict, suffix: str = "") -> list[dict | None]:
    """final.json's test entries (`suffix` "" or "_groups"): 1:N sampled first, then full ranking."""
    full_run = final.get("eval") == "full"
    return [
        final.get(f"test_sampled{suffix}") if full_run else final.get(f"test{suffix}"),
        final.get(f"test{suffix}") if full_run else final.get(f"test_full{suffix}"),
    ]


def seconds_per_round(run: RunRecords) -> float:
    seconds = [r["train_seconds"] for r in run.records]
    return sum(seconds) / len(seconds)


def final_table(runs: list[RunRecords], form: str = "text") -> str:
    """The runs' final figures, one row per run; with runs that hold new items (`--cold-items`), a
    second table of their test by group of users (text and Markdown only: CSV holds one table)."""
    rows = []
    for run in runs:
        f, per_round = run.final, f"{seconds_per_round(run):.2f}"
        if f is None:
            rows.append(
                [
                    run.name,
                    str(run.best_round or "-"),
                    "-",
                    "(not finished)",
                    "-",
                    "-",
                    "-",
                    str(len(run.records)),
                    "-",
                    per_round,
                ]
            )
            continue
        figures = [
            cell
            for test in both_protocols(f)
            for cell in (["-", "-"] if test is None else [f"{test['HR@10']:.4f}", f"{test['NDCG@10']:.4f}"])
        ]
        rows.append(
            [
                run.name,
                str(f["best_round"]),
                f"{f['valid']['HR@10']:.4f}",
                *figures,
                str(f["rounds_run"]),
                "yes" if f["stopped_early"] else "no",
                per_round,
            ]
        )
    table = render(["run", *RUN_COLUMNS], rows, form)
    grouped = [run for run in runs if run.final is not None and "test_groups" in run.final]
    if not grouped or form == "csv":
        return table
    rows = []
    for run in grouped:
        tests = both_protocols(run.final, "_groups")
        users = "/".join(str(run.final["test_groups"][g]["users"]) for g in GROUPS)
        rows.append(
            [
                run.name,
                users,
                *(
                    f"{test[g][m]:.4f}" if test is not None and m in test[g] else "-"
                    for g in GROUPS
                    for test in tests
                    for m in ("HR@10", "NDCG@10")
                ),
            ]
        )
    return (
        table
        + "\n\nby test item (new: never trained on; trained):\n"
        + render(["run", "test users", *GROUP_COLUMNS], rows, form)
    )


def run_settings(run: RunRecords) -> dict:
    """The run's settings as today's TrainConfig reads its config.json: a run saved before a setting
    existed gets its default, so it groups with a new run of the same settings."""
    return saved_config(run.run_dir).to_dict()


def by_setting(runs: list[RunRecords]) -> list[list[tuple[RunRecords, int]]]:
    """Finished runs (with their seeds) grouped by setting, in the order each setting first appears."""
    unfinished = [run.name for run in runs if run.final is None]
    if unfinished:
        raise InputError(f"--over-seeds needs finished runs; not finished: {', '.join(unfinished)}")
    groups: dict[str, list[tuple[RunRecords, int]]] = {}
    for run in runs:
        settings = run_settings(run)
        key = json.dumps({k: v for k, v in settings.items() if k not in NOT_THE_SETTING}, sort_keys=True)
        groups.setdefault(key, []).append((run, settings["seed"]))
    for group in groups.values():
        seeds = [seed for _, seed in group]
        if len(set(seeds)) < len(seeds):
            raise InputError(
                f"runs {', '.join(run.name for run, _ in group)} have the same settings and seeds "
                f"{seeds}: one seed would count more than once; give each seed once"
            )
    return list(groups.values())


def seed_figures(run: RunRecords) -> list[float | None]:
    """One finished run's figures under SEED_COLUMNS (None where the run has no such test)."""
    f = run.final
    sampled, full = both_protocols(f)
    return [
        f["valid"]["HR@10"],
        *(None if test is None else test[m] for test in (sampled, full) for m in ("HR@10", "NDCG@10")),
        float(f["best_round"]),
        seconds_per_round(run),
    ]


def seeds_table(runs: list[RunRecords], form: str = "text") -> str:
    """One row per setting: its first run's name, its seeds, and mean ± se over them of each figure
    ("-" where one of its runs lacks it)."""
    rows = []
    for group in by_setting(runs):
        each = [seed_figures(run) for run, _ in group]
        spreads = [
            None if any(e[i] is None for e in each) else Spread.of([e[i] for e in each])
            for i in range(len(SEED_COLUMNS))
        ]
        rows.append(
            [group[0][0].name, " ".join(str(seed) for seed in sorted(seed for _, seed in group)), *spreads]
        )
    return render(["setting (its first run)", "seeds", *SEED_COLUMNS], rows, form)


def render(header: list[str], rows: list[list], form: str) -> str:
    """A table as aligned text, Markdown or CSV. Cells are strings, Spreads ("mean ± se"; in CSV a
    mean and an se column) or None (a Spread's column without a figure: "-")."""
    if form not in FORMATS:
        raise InputError(f"--format {form}: expected one of {', '.join(FORMATS)}")
    if form == "csv":
        spread = [any(isinstance(row[i], Spread) for row in rows) for i in range(len(header))]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(
            [
                part
                for name, two in zip(header, spread)
                for part in ([f"{name} mean", f"{name} se"] if two else [name])
            ]
        )
        for row in rows:
            writer.writerow(
                [
                    part
                    for cell, two in zip(row, spread)
                    for part in (
                        (
                            ["", ""]
                            if cell is None
                            else [repr(cell.mean), "" if cell.se is None else repr(cell.se)]
                        )
                        if two
                        else ["" if cell is None else cell]
                    )
                ]
            )
        return out.getvalue().rstrip("\n")
    cells = [header] + [
        ["-" if cell is None else cell.text() if isinstance(cell, Spread) else cell for cell in row]
        for row in rows
    ]
    if form == "markdown":
        lines = ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join([lines[0], "|" + "---|" * len(header), *lines[1:]])
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells
    )
