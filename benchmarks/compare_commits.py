"""Round seconds of this checkout against another commit, measured in turns in one run.

    python benchmarks/compare_commits.py --base 534f972                      # default recipe, top-1000
    python benchmarks/compare_commits.py --base 534f972 --setting seed       # the seed's setting (client Adam)
    python benchmarks/compare_commits.py --base 534f972 --setting seed --local-optimizer sgd

The base commit is checked out into a temporary git worktree. Each turn runs one child process per
side (base, then this checkout, then base again...: ABBA order), which times `--rounds` federated
rounds after one untimed warm-up round with the vectorised engine at explicit chunk sizes (both
sides' default), in the same Python environment; only PYTHONPATH differs. Prints each side's median
round seconds over all turns and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# The child uses only what both sides share: TrainConfig, prepare_run, make_engine and run_round. A
# setting the side's TrainConfig does not know is left out there (that side runs its own default),
# and the child names it, so that the comparison says where the two sides' settings differ.
CHILD = r"""
import dataclasses, json, sys, tempfile, torch
from feddmmr.config import TrainConfig
from feddmmr.engines import make_engine
from feddmmr.train import prepare_run, run_round
fields, rounds, clients, windows, threads = json.loads(sys.argv[1])
known = {f.name for f in dataclasses.fields(TrainConfig)}
print("UNKNOWN " + json.dumps(sorted(set(fields) - known)))
fields = {name: value for name, value in fields.items() if name in known}
torch.set_num_threads(threads)
with tempfile.TemporaryDirectory() as tmp:
    run = prepare_run(TrainConfig(run_dir=tmp, **fields))
    engine = make_engine("vectorized", run.model, chunk_clients=clients, chunk_windows=windows)
    seconds = [run_round(run, engine, r + 1)["train_seconds"] for r in range(rounds + 1)][1:]
print("SECONDS " + json.dumps(seconds))
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--base", required=True, help="the commit to compare against (e.g. 534f972)")
    p.add_argument("--data", default="ml-1m-top1000")
    p.add_argument(
        "--setting",
        choices=("default", "seed", "short_history"),
        default="default",
        help="default: TrainConfig's; seed: the seed's setting; short_history: this checkout's preset",
    )
    p.add_argument("--local-optimizer", choices=("sgd", "adam"))
    p.add_argument("--turns", type=int, default=2, help="processes per side")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per process")
    p.add_argument("--chunk-clients", type=int, default=16)
    p.add_argument("--chunk-windows", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    return p.parse_args(argv)


def time_side(src: Path, fields: dict, args) -> tuple[list[float], list[str]]:
    """(the side's round seconds, the settings its TrainConfig does not know)."""
    payload = json.dumps([fields, args.rounds, args.chunk_clients, args.chunk_windows, args.threads])
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, "-c", CHILD, payload], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"the run from {src} failed:\n{out.stderr[-3000:]}")
    lines = {
        line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1])
        for line in out.stdout.splitlines()
        if line.startswith(("SECONDS ", "UNKNOWN "))
    }
    return lines["SECONDS"], lines["UNKNOWN"]


def main(argv=None) -> None:
    args = parse_args(argv)
    data_dir, top_users, label = common.dataset(args.data)
    fields = {
        "default": {},
        "seed": dict(common.SEED_SETTING),
        "short_history": common.short_history(),
    }[args.setting]
    if args.local_optimizer:
        fields.update(
            local_optimizer=args.local_optimizer, learning_rate=1.0 if args.local_optimizer == "sgd" else 1e-3
        )
    fields.update(data_dir=data_dir, top_users=top_users)
    print(common.machine_line())
    print(
        f"setting: {args.setting} {fields} | chunks {args.chunk_clients} / {args.chunk_windows} | "
        f"{args.turns} turns x {args.rounds} rounds per side"
    )
    with tempfile.TemporaryDirectory(prefix="feddmmr-base-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(
            ["git", "-C", str(common.ROOT), "worktree", "add", "--detach", str(base), args.base],
            check=True,
            capture_output=True,
        )
        try:
            sides = {f"base {args.base}": base / "src", "this checkout": common.ROOT / "src"}
            seconds: dict[str, list[float]] = {name: [] for name in sides}
            for turn in range(args.turns):
                order = list(sides) if turn % 2 == 0 else list(sides)[::-1]
                for name in order:
                    times, unknown = time_side(sides[name], fields, args)
                    if unknown and turn == 0:
                        print(f"  {name} does not know {', '.join(unknown)}: it runs its own default there")
                    seconds[name] += times
                    print(f"  turn {turn + 1} {name}: {', '.join(f'{t:.2f}' for t in times)} s", flush=True)
        finally:
            subprocess.run(
                ["git", "-C", str(common.ROOT), "worktree", "remove", "--force", str(base)], check=False
            )
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    for name, value in medians.items():
        print(
            f"{name}: median {value:.3f} s per round (min {min(seconds[name]):.3f}, n={len(seconds[name])})"
        )
    base_median, ours = medians[f"base {args.base}"], medians["this checkout"]
    print(f"this checkout / base: {ours / base_median:.2f} (ratio of medians)")


if __name__ == "__main__":
    main()
