"""`feddmmr report RUN_DIR`: PNG plots of a run's metrics.jsonl (matplotlib, Agg backend).

- training.png: training loss per round, validation HR@10 and NDCG@10 on the validated rounds;
- router.png (FedDMMR): mean router weight of each modality expert, and the gate g;
- memory.png (FedDMMR): mean short/long-term memory sizes, the long-term write ratio, and the
  cumulative merges and evictions.
"""

from __future__ import annotations

import json
from pathlib import Path

from feddmmr.errors import InputError, read_guarded


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl; is this a feddmmr run directory?")
    records = []
    for number, line in enumerate(read_guarded(path, "metrics file", lambda p: p.read_text(encoding="utf-8").splitlines(),
                                               fix=REBUILD_METRICS), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{path}, line {number}: not a JSON record ({error.msg}); {REBUILD_METRICS}") from None
        if not isinstance(record, dict) or not {"round", "train_loss"} <= set(record):
            raise InputError(f"{path}, line {number}: not a round's record (no round and train_loss); {REBUILD_METRICS}")
        records.append(record)
    return records


REBUILD_METRICS = ("feddmmr writes this file whole after each round, so it was changed by hand or another program; "
                   "`feddmmr train --resume RUN_DIR` writes it again from the last checkpoint")


def write_report(run_dir: str | Path, output: str | Path | None = None) -> list[Path]:
    """Write the plots into `output` (default RUN_DIR/plots); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"{run_dir}: metrics.jsonl is empty (no round finished yet)")
    output = Path(output) if output else run_dir / "plots"
    if output.exists() and not output.is_dir():
        raise InputError(f"--output {output} is a file; expected a folder for the plots (made if missing)")
    output.mkdir(parents=True, exist_ok=True)
    validated = [r for r in records if r.get("validated") and "val" in r]
    written = []

    def save(figure, name: str) -> None:
        for axis in figure.axes:  # rounds are whole numbers
            axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        figure.tight_layout()
        figure.savefig(output / name, dpi=120)
        plt.close(figure)
        written.append(output / name)

    figure, (loss_axis, val_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot([r["round"] for r in records], [r["train_loss"] for r in records], marker=".")
    loss_axis.set(xlabel="round", ylabel="training loss", title="training loss")
    for metric in ("HR@10", "NDCG@10"):
        val_axis.plot([r["round"] for r in validated], [r["val"][metric] for r in validated], marker="o", label=metric)
    val_axis.set(xlabel="round", title="validation (validated rounds)")
    val_axis.legend()
    save(figure, "training.png")

    routed = [r for r in validated if "router_weights" in r]
    if routed:
        figure, (weight_axis, gate_axis) = plt.subplots(1, 2, figsize=(10, 4))
        for name in routed[0]["router_weights"]:
            weight_axis.plot([r["round"] for r in routed], [r["router_weights"][name] for r in routed], marker="o", label=name)
        weight_axis.set(xlabel="round", ylabel="mean router weight", title="router weights per expert", ylim=(0, 1))
        weight_axis.legend()
        gate_axis.plot([r["round"] for r in routed], [r["gate"] for r in routed], marker="o")
        gate_axis.set(xlabel="round", title="gate g")
        save(figure, "router.png")

    remembered = [r for r in validated if "memory" in r]
    if remembered:
        rounds = [r["round"] for r in remembered]
        figure, axes = plt.subplots(1, 3, figsize=(14, 4))
        for key, label in (("short_term_size", "short-term"), ("long_term_size", "long-term")):
            axes[0].plot(rounds, [r["memory"][key] for r in remembered], marker="o", label=label)
        axes[0].set(xlabel="round", ylabel="items per client (mean)", title="memory size")
        axes[0].legend()
        axes[1].plot(rounds, [r["memory"]["write_ratio"] for r in remembered], marker="o")
        axes[1].set(xlabel="round", title="long-term write ratio (cumulative)")
        for key in ("merges", "evictions"):
            axes[2].plot(rounds, [r["memory"][key] for r in remembered], marker="o", label=key)
        axes[2].set(xlabel="round", title="long-term merges and evictions (cumulative)")
        axes[2].legend()
        save(figure, "memory.png")
    return written
