"""`feddmmr report RUN_DIR [RUN_DIR ...]`: PNG plots of runs' metrics.jsonl (matplotlib, Agg
backend); the table of final figures beside them is summary.py's. Every plot marks the best round
(dashed) and an early stop (dotted).

- training.png (one run): training loss per round; validation HR@10 and NDCG@10 on the validated
  rounds, with the test figures at the best round; clients that failed or were dropped;
- comparison.png (several runs): their validation HR@10 and NDCG@10, training loss and seconds
  per round, overlaid;
- router.png (FedDMMR): mean router weight of each modality expert, and the gate g;
- memory.png (FedDMMR): mean short/long-term memory sizes, the long-term write ratio, and the
  cumulative merges and evictions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from feddmmr.errors import InputError, read_guarded


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl; is this a feddmmr run directory?")
    records = []
    for number, line in enumerate(
        read_guarded(
            path, "metrics file", lambda p: p.read_text(encoding="utf-8").splitlines(), fix=REBUILD_METRICS
        ),
        start=1,
    ):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(
                f"{path}, line {number}: not a JSON record ({error.msg}); {REBUILD_METRICS}"
            ) from None
        if not isinstance(record, dict) or not {"round", "train_loss"} <= set(record):
            raise InputError(
                f"{path}, line {number}: not a round's record (no round and train_loss); {REBUILD_METRICS}"
            )
        records.append(record)
    return records


REBUILD_METRICS = (
    "feddmmr writes this file whole after each round, so it was changed by hand or another program; "
    "`feddmmr train --resume RUN_DIR` writes it again from the last checkpoint"
)


def read_final(run_dir: Path) -> dict | None:
    """final.json of a finished run; None while the run has not finished."""
    path = Path(run_dir) / "final.json"
    if not path.exists():
        return None
    return read_guarded(
        path,
        "final.json",
        lambda p: json.loads(p.read_text()),
        fix="`feddmmr evaluate RUN_DIR` recomputes its figures",
    )


@dataclass
class RunRecords:
    """What the plots read of one run."""

    run_dir: Path
    records: list[dict]
    final: dict | None
    select_metric: str = "HR@10"  # what picks the best round (config.json's; HR@10 before it existed)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def validated(self) -> list[dict]:
        return [r for r in self.records if r.get("validated") and "val" in r]

    @property
    def best_round(self) -> int | None:
        if self.final is not None:
            return self.final["best_round"]
        return (
            max(self.validated, key=lambda r: r["val"][self.select_metric])["round"]
            if self.validated
            else None
        )


def load_run(run_dir: str | Path) -> RunRecords:
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        raise InputError(f"{run_dir}: metrics.jsonl is empty (no round finished yet)")
    config = run_dir / "config.json"
    metric = json.loads(config.read_text()).get("select_metric", "HR@10") if config.exists() else "HR@10"
    return RunRecords(run_dir, records, read_final(run_dir), metric)


def train_losses(run) -> list[float]:
    """Each round's training loss; NaN (a gap in the plot) for a round in which no step trained."""
    return [float("nan") if r["train_loss"] is None else r["train_loss"] for r in run.records]


def write_report(run_dirs: str | Path | list, output: str | Path | None = None) -> list[Path]:
    """Plots of one run (training.png, and for FedDMMR router.png and memory.png), or of several
    runs side by side (comparison.png); returns the files written. `output` defaults to
    RUN_DIR/plots for one run and ./report for several."""
    paths = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    return plot_runs([load_run(path) for path in paths], output)


def plot_runs(runs: list[RunRecords], output: str | Path | None = None) -> list[Path]:
    """`write_report` for runs already read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    output = Path(output) if output else (runs[0].run_dir / "plots" if len(runs) == 1 else Path("report"))
    if output.exists() and not output.is_dir():
        raise InputError(f"--output {output} is a file; expected a folder for the plots (made if missing)")
    output.mkdir(parents=True, exist_ok=True)
    written = []

    def save(figure, name: str) -> None:
        for axis in figure.axes:  # rounds are whole numbers
            axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            axis.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(output / name, dpi=120)
        plt.close(figure)
        written.append(output / name)

    if len(runs) > 1:
        save(_comparison(plt, runs), "comparison.png")
        return written
    run = runs[0]
    save(_training(plt, run), "training.png")
    routed = [r for r in run.validated if "router_weights" in r]
    if routed:
        figure, (weight_axis, gate_axis) = plt.subplots(1, 2, figsize=(10, 4))
        for name in routed[0]["router_weights"]:
            weight_axis.plot(
                [r["round"] for r in routed],
                [r["router_weights"][name] for r in routed],
                marker="o",
                label=name,
            )
        weight_axis.set(
            xlabel="round", ylabel="mean router weight", title="router weights per expert", ylim=(0, 1)
        )
        weight_axis.legend()
        gate_axis.plot([r["round"] for r in routed], [r["gate"] for r in routed], marker="o")
        gate_axis.set(xlabel="round", ylabel="gate g", title="gate g")
        _mark_best(gate_axis, run)
        save(figure, "router.png")
    remembered = [r for r in run.validated if "memory" in r]
    if remembered:
        rounds = [r["round"] for r in remembered]
        figure, axes = plt.subplots(1, 3, figsize=(14, 4))
        for key, label in (("short_term_size", "short-term"), ("long_term_size", "long-term")):
            axes[0].plot(rounds, [r["memory"][key] for r in remembered], marker="o", label=label)
        axes[0].set(xlabel="round", ylabel="items per client (mean)", title="memory size")
        axes[0].legend()
        axes[1].plot(rounds, [r["memory"]["write_ratio"] for r in remembered], marker="o")
        axes[1].set(
            xlabel="round", ylabel="share of items written", title="long-term write ratio (cumulative)"
        )
        for key in ("merges", "evictions"):
            axes[2].plot(rounds, [r["memory"][key] for r in remembered], marker="o", label=key)
        axes[2].set(xlabel="round", ylabel="count", title="long-term merges and evictions (cumulative)")
        axes[2].legend()
        save(figure, "memory.png")
    return written


def _mark_best(axis, run: RunRecords, color: str = "grey", label: bool = True) -> None:
    """A dashed line at the best round and, if the run stopped early, a dotted one where it stopped."""
    if run.best_round is not None:
        axis.axvline(
            run.best_round,
            color=color,
            linestyle="--",
            linewidth=1,
            label=f"best round {run.best_round}" if label else None,
        )
    if run.final is not None and run.final["stopped_early"]:
        axis.axvline(
            run.final["rounds_run"],
            color=color,
            linestyle=":",
            linewidth=1,
            label=f"early stop ({run.final['rounds_run']})" if label else None,
        )


def _training(plt, run: RunRecords):
    import matplotlib.ticker

    """Training loss; validation HR@10 and NDCG@10 with the test figures of the best round;
    clients that failed or were dropped."""
    figure, (loss_axis, val_axis, client_axis) = plt.subplots(1, 3, figsize=(15, 4))
    rounds = [r["round"] for r in run.records]
    loss_axis.plot(rounds, train_losses(run), marker=".")
    loss_axis.set(xlabel="round", ylabel="training loss (mean over clients)", title="training loss")
    _mark_best(loss_axis, run)
    loss_axis.legend()
    for metric, color in (("HR@10", "C0"), ("NDCG@10", "C1")):
        val_axis.plot(
            [r["round"] for r in run.validated],
            [r["val"][metric] for r in run.validated],
            marker="o",
            color=color,
            label=f"validation {metric}",
        )
        if run.final is not None:
            val_axis.plot(
                [run.final["best_round"]],
                [run.final["test"][metric]],
                marker="*",
                markersize=14,
                linestyle="none",
                color=color,
                label=f"test {metric} {run.final['test'][metric]:.4f}",
            )
    _mark_best(val_axis, run)
    val_axis.set(
        xlabel="round", ylabel="metric", title="validation (validated rounds), test at the best round"
    )
    val_axis.legend(fontsize=8)
    lost = 0
    for key, label in (
        ("failed_clients", "failed (no reply)"),
        ("dropped_clients", "dropped (non-finite update)"),
    ):
        counts = [r.get(key, 0) for r in run.records]
        client_axis.bar(rounds, counts, label=f"{label}: {sum(counts)}", alpha=0.7)
        lost = max(lost, *counts)
    client_axis.set(
        xlabel="round", ylabel="clients", title="clients lost per round", ylim=(0, max(1, lost) * 1.2)
    )
    client_axis.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    client_axis.legend(fontsize=8)
    return figure


def _comparison(plt, runs: list[RunRecords]):
    """Several runs overlaid: validation HR@10 and NDCG@10, training loss, seconds per round; each
    run's best round dashed, its test HR@10 a star."""
    figure, axes = plt.subplots(2, 2, figsize=(13, 8))
    for index, run in enumerate(runs):
        color = f"C{index % 10}"
        rounds = [r["round"] for r in run.records]
        for axis, metric in ((axes[0][0], "HR@10"), (axes[0][1], "NDCG@10")):
            axis.plot(
                [r["round"] for r in run.validated],
                [r["val"][metric] for r in run.validated],
                marker="o",
                markersize=3,
                color=color,
                label=run.name,
            )
            if run.final is not None:
                axis.plot(
                    [run.final["best_round"]],
                    [run.final["test"][metric]],
                    marker="*",
                    markersize=12,
                    color=color,
                    linestyle="none",
                )
            _mark_best(axis, run, color=color, label=False)
        axes[1][0].plot(rounds, train_losses(run), color=color, label=run.name)
        axes[1][1].plot(
            rounds, [r["train_seconds"] + r["eval_seconds"] for r in run.records], color=color, label=run.name
        )
    axes[0][0].set(
        xlabel="round", ylabel="validation HR@10", title="validation HR@10 (star: test at the best round)"
    )
    axes[0][1].set(
        xlabel="round", ylabel="validation NDCG@10", title="validation NDCG@10 (star: test at the best round)"
    )
    axes[1][0].set(xlabel="round", ylabel="training loss", title="training loss")
    axes[1][1].set(xlabel="round", ylabel="seconds", title="seconds per round (training + validation)")
    for axis in axes.flat:
        axis.legend(fontsize=8)
    return figure
