"""Is CUDA training correct and fast? One GPU, about 5 minutes, one table.

    python benchmarks/gpu_check.py                         # ML-1M from ../shared/data (or --data PATH)
    python benchmarks/gpu_check.py --write-docs            # ... and put the table into docs/notebook/2026-12-06-benchmarks.md
    python benchmarks/gpu_check.py --device cpu --quick    # the script itself on synthetic data (a smoke test)

Without a CUDA device it exits with a message saying so. It measures, on ML-1M top-1000 unless said:

- every code path on the device, 2 rounds each on the built-in synthetic data: client SGD and
  Adam, server FedAdam, FedAvgM and DP, the sequential engine, the centralised baseline and
  FedDMMR with its memory (random features): "ok", or the error;
- quality: validation HR@10 at rounds 5 and 10 of the default recipe in float32, bf16 and fp16
  (seed 0, the same sampled clients and negatives in each);
- round seconds (median of rounds 2+, and round 1 alone) of the default recipe and of the seed's
  setting on top-1000, and of the default recipe on full ML-1M;
- validation seconds (1:100, every user) and peak GPU memory of each run.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from feddmmr.config import TrainConfig  # noqa: E402
from feddmmr.data.load import load_sequences  # noqa: E402
from feddmmr.features.store import save_features  # noqa: E402
from feddmmr.train import train  # noqa: E402

# Every path the issue names, on tiny synthetic runs: (label, TrainConfig fields).
SMALL = dict(
    max_seq_len=20, hidden_dim=32, num_heads=2, num_blocks=1, num_rounds=2, validate_every=2, patience=0
)
PATHS = [
    ("vectorized, SGD clients, FedAdam", {}),
    (
        "vectorized, Adam clients, FedAvg",
        dict(local_optimizer="adam", learning_rate=1e-3, server_optimizer="fedavg"),
    ),
    ("vectorized, FedAvgM", dict(server_optimizer="fedavgm", server_learning_rate=1.0)),
    ("vectorized, DP-FedAvg", dict(dp_clip_norm=0.5, dp_noise_multiplier=0.5)),
    ("sequential engine", dict(engine="sequential", client_fraction=0.05)),
    ("centralized", dict(centralized=True, local_optimizer="adam", learning_rate=1e-3, batch_size=64)),
    ("feddmmr, memory", dict(model="feddmmr")),
    ("vectorized, fp16", dict(amp="fp16")),
    ("vectorized, bf16", dict(amp="bf16")),
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data", default="ml-1m", help="ml-1m (the shared file; top-1000 is cut from it) or a path"
    )
    p.add_argument("--device", default="cuda")
    p.add_argument(
        "--quick", action="store_true", help="synthetic data and 3 rounds (checks the script, not the GPU)"
    )
    p.add_argument("--write-docs", nargs="?", const=str(common.DOCS_RESULTS), metavar="FILE")
    return p.parse_args(argv)


class Runs:
    """Runs train() in a scratch folder and keeps each run's per-round records and peak memory."""

    def __init__(self, scratch: Path, device: str) -> None:
        self.scratch, self.device, self.count = scratch, device, 0

    def __call__(self, **fields) -> tuple[list[dict], dict, float]:
        self.count += 1
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        config = TrainConfig(device=self.device, run_dir=str(self.scratch / f"run{self.count}"), **fields)
        result = train(config)
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.device.startswith("cuda") else float("nan")
        return result.history, result.final, peak


def round_seconds(history: list[dict]) -> tuple[float, float]:
    """(median train seconds of rounds 2+, round 1's)."""
    seconds = [r["train_seconds"] for r in history]
    return statistics.median(seconds[1:] or seconds), seconds[0]


def validation(history: list[dict], at: int) -> str:
    record = next((r for r in history if r["round"] == at and r.get("val")), None)
    return "-" if record is None else f"{record['val']['HR@10']:.3f}"


def eval_seconds(history: list[dict]) -> float:
    return statistics.median(r["eval_seconds"] for r in history if r.get("val"))


def check_paths(runs: Runs, scratch: Path) -> list[str]:
    data = load_sequences(None)
    features = scratch / "features.npz"
    save_features(
        features,
        data.item_ids[1:],
        np.random.default_rng(0).normal(size=(data.num_items, 16)).astype(np.float32),
    )
    lines = []
    for label, fields in PATHS:
        if fields.get("amp") == "fp16" and not runs.device.startswith("cuda"):
            lines.append(f"{label:36s} n/a (fp16 is CUDA only)")
            continue
        if fields.get("model") == "feddmmr":
            fields = {**fields, "modality": [f"text={features}"]}
        try:
            history, _, _ = runs(**{**SMALL, **fields})
            finite = all(np.isfinite(r["train_loss"]) for r in history)
            lines.append(
                f"{label:36s} ok (train loss {history[-1]['train_loss']:.3f}, "
                f"validation HR@10 {validation(history, 2)}{'' if finite else ', NON-FINITE LOSS'})"
            )
        except Exception as error:  # a path that fails is the finding: report it, check the others
            lines.append(f"{label:36s} FAILED: {type(error).__name__}: {str(error).splitlines()[0][:160]}")
            traceback.print_exc()
    return lines


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(
            f"gpu_check: no CUDA device is visible (torch {torch.__version__}, torch.cuda.is_available() is "
            f"False). Run it on a machine with an NVIDIA GPU and a CUDA build of torch, or try the script on the "
            f"CPU with --device cpu --quick."
        )
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("feddmmr.engines.chunking").setLevel(logging.INFO)  # the chunk sizes auto chose
    if args.quick:
        data_dir, top_users, full = None, None, None
        rounds, quality_validate = 3, 3
    else:
        data_dir, _, _ = common.dataset(args.data)
        top_users, full = 1000, data_dir
        rounds, quality_validate = 10, 5
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    lines = [
        f"device: {name} | torch {torch.__version__} | {'synthetic data (--quick)' if args.quick else 'ML-1M'}"
    ]

    def report(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    print(lines[0])
    with tempfile.TemporaryDirectory(prefix="feddmmr-gpu-check-") as tmp:
        runs = Runs(Path(tmp), args.device)
        report("every path on the device (2 rounds, synthetic data):")
        for line in check_paths(runs, Path(tmp)):
            report("  " + line)

        report()
        report(
            "| run | amp | val HR@10 r5 / r10 | s/round (median r2+) | round 1 s | validation s | peak GPU GiB |"
        )
        report("|---|---|---|---|---|---|---|")
        data = dict(data_dir=data_dir, top_users=top_users)
        for amp in ("off", "bf16", "fp16"):
            if amp == "fp16" and not args.device.startswith("cuda"):
                continue
            history, _, peak = runs(
                **data, amp=amp, num_rounds=rounds, validate_every=quality_validate, patience=0
            )
            median, first = round_seconds(history)
            r5 = validation(history, quality_validate)
            report(
                f"| default recipe, top-1000 | {amp} | {r5} / {validation(history, rounds)} | {median:.3f} | "
                f"{first:.2f} | {eval_seconds(history):.3f} | {peak:.1f} |"
            )
        seed = dict(common.SEED_SETTING)
        history, _, peak = runs(**data, **seed, num_rounds=min(rounds, 6), validate_every=100, patience=0)
        median, first = round_seconds(history)
        report(
            f"| seed setting (client Adam), top-1000 | off | - | {median:.3f} | {first:.2f} | "
            f"{eval_seconds(history):.3f} | {peak:.1f} |"
        )
        sgd_seed = {**seed, "local_optimizer": "sgd", "learning_rate": 1.0}
        history, _, peak = runs(**data, **sgd_seed, num_rounds=min(rounds, 6), validate_every=100, patience=0)
        median, first = round_seconds(history)
        report(
            f"| seed setting, SGD clients, top-1000 | off | - | {median:.3f} | {first:.2f} | "
            f"{eval_seconds(history):.3f} | {peak:.1f} |"
        )
        if full is not None:
            history, _, peak = runs(data_dir=full, num_rounds=6, validate_every=100, patience=0)
            median, first = round_seconds(history)
            report(
                f"| default recipe, full ML-1M | off | - | {median:.3f} | {first:.2f} | "
                f"{eval_seconds(history):.3f} | {peak:.1f} |"
            )
    if args.write_docs:
        common.write_result(args.write_docs, "gpu-check", f"GPU check: {name}", lines)


if __name__ == "__main__":
    main()
