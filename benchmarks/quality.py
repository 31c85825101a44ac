"""Recommendation quality: federated (the defaults of `feddmmr train`) vs centralised over several seeds.

    python benchmarks/quality.py                          # seeds 0 1 2, defaults of feddmmr train, ML-1M top-1000 (hours on 2 cores)
    python benchmarks/quality.py --seeds 0 --modes federated
    python benchmarks/quality.py -- --max-seq-len 200     # extra `feddmmr train` flags after --
    python benchmarks/quality.py --dry-run                # print the commands (and any finished results)
    python benchmarks/quality.py --write-docs             # also put the table into docs/RESULTS.md

Runs go to OUT/<data>[-<hash of the extra flags>]/<mode>/seed<N>/, each a normal run directory
(inspect it with `feddmmr evaluate`). Rerunning resumes: a seed whose final.json exists is
skipped, and one interrupted mid-run continues from its last checkpoint (`feddmmr train --resume`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MODES = ("federated", "centralized")


def parse_args(argv=None):
    own, extra = common.split_passthrough(argv)
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data", default="ml-1m-top1000", help="ml-1m-top1000 (default), ml-1m, synthetic, or a path"
    )
    p.add_argument("--top-users", type=int)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--out", default="/tmp/feddmmr-bench", help="folder of the run directories")
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="torch threads: the order of float sums changes with it, so results can differ in the last digits (0.708 vs 0.716 test HR@10 for the default synthetic run at 1 and 2 threads); not part of the run's identity",
    )
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument(
        "--write-docs",
        nargs="?",
        const=str(common.DOCS_RESULTS),
        metavar="FILE",
        help="also write the table into a section of FILE (default docs/RESULTS.md)",
    )
    return p.parse_args(own), extra


def settings_folder(out: Path, label: str, extra: list[str]) -> Path:
    """Runs with different extra flags must never resume one another: hash them into the name."""
    if not extra:
        return out / label
    return out / f"{label}-{hashlib.sha1(' '.join(extra).encode()).hexdigest()[:8]}"


def command_for(run_dir: Path, mode: str, seed: int, args, data_dir, top_users, extra) -> list[str] | None:
    """None when the run is finished; `--resume` when it has a checkpoint; otherwise a fresh run."""
    if (run_dir / "final.json").exists():
        return None
    if (run_dir / "checkpoints" / "last.pt").exists():
        # A resumed run keeps its saved config; only device/threads may be given.
        return [
            sys.executable,
            "-m",
            "feddmmr",
            "train",
            "--resume",
            str(run_dir),
            "--threads",
            str(args.threads),
        ]
    # The quality bar is about the defaults of `feddmmr train` (client fraction 0.2 is one).
    setting = {"seed": seed, "threads": args.threads, "run_dir": str(run_dir)}
    return common.train_command(
        data_dir, top_users, setting, extra + (CENTRALIZED if mode == "centralized" else [])
    )


# The centralised baseline's own recipe (docs/RESULTS.md §3): Adam at lr 1e-3 in batches of 16 windows
# (16 of the default's 200 positions hold the targets of 64 windows of 50, the baseline's batch before
# the default read 200), dropout 0.2, until 4 epochs pass without a validation gain (at most 30): on ML-1M
# top-1000 it plateaus by epoch 11. The federated defaults (SGD clients under a server Adam) have no
# pooled counterpart.
CENTRALIZED = [
    "--centralized",
    "--local-optimizer",
    "adam",
    "--learning-rate",
    "1e-3",
    "--batch-size",
    "16",
    "--dropout",
    "0.2",
    "--num-rounds",
    "30",
    "--validate-every",
    "1",
    "--patience",
    "4",
]


def execute(command: list[str], run_dir: Path) -> bool:
    """Run one training; its output goes to run_dir/train.log, its wall time adds up in bench.json
    (across resumptions)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    timing = run_dir / "bench.json"
    spent = json.loads(timing.read_text())["wall_seconds"] if timing.exists() else 0.0
    started = time.perf_counter()
    with open(run_dir / "train.log", "a") as log:
        code = subprocess.run(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=common.ROOT, env=common.child_env()
        ).returncode
    timing.write_text(json.dumps({"wall_seconds": spent + time.perf_counter() - started}))
    if code != 0:
        print(f"  FAILED (exit {code}); last lines of {run_dir / 'train.log'}:")
        print("  " + "\n  ".join((run_dir / "train.log").read_text().splitlines()[-15:]))
    return code == 0


def read_run(run_dir: Path) -> dict | None:
    final_path = run_dir / "final.json"
    if not final_path.exists():
        return None
    final = json.loads(final_path.read_text())
    metrics = run_dir / "metrics.jsonl"
    rounds = (
        [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        if metrics.exists()
        else []
    )
    timing = run_dir / "bench.json"
    config = json.loads((run_dir / "config.json").read_text())
    return {
        "eval": "full ranking" if final["eval"] == "full" else f"1:{config['num_negatives_eval']} sampled",
        "hr": final["test"]["HR@10"],
        "ndcg": final["test"]["NDCG@10"],
        "best_round": final["best_round"],
        "rounds_run": final["rounds_run"],
        "train_s": final["train_seconds"],
        "eval_s": sum(r.get("eval_seconds", 0.0) for r in rounds),
        "wall_s": json.loads(timing.read_text())["wall_seconds"] if timing.exists() else None,
    }


def mean_std(values: list[float], digits: int = 4) -> str:
    # Sample standard deviation (n-1) over seeds; one seed has none.
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return (
        f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"
        if len(values) > 1
        else f"{values[0]:.{digits}f}"
    )


def table(results: dict[str, list[dict]], wanted: int) -> list[str]:
    lines = [
        "| mode | seeds | test HR@10 | test NDCG@10 | best round | rounds run | train s (mean) | eval s (mean) | wall s (mean) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, runs in results.items():
        if not runs:
            continue
        walls = [
            r["wall_s"] for r in runs if r["wall_s"] is not None
        ]  # none for runs made outside this script
        wall = f"{statistics.mean(walls):.0f}" if walls else "n/a"
        lines.append(
            f"| {mode} | {len(runs)}/{wanted} | {mean_std([r['hr'] for r in runs])} | {mean_std([r['ndcg'] for r in runs])} | "
            f"{', '.join(str(r['best_round']) for r in runs)} | {', '.join(str(r['rounds_run']) for r in runs)} | "
            f"{statistics.mean(r['train_s'] for r in runs):.0f} | {statistics.mean(r['eval_s'] for r in runs):.0f} | {wall} |"
        )
    fed, cen = results.get("federated"), results.get("centralized")
    if fed and cen:
        gaps = []
        for key, name in (("hr", "HR@10"), ("ndcg", "NDCG@10")):
            f, c = statistics.mean(r[key] for r in fed), statistics.mean(r[key] for r in cen)
            gaps.append(f"{name} {f - c:+.4f} ({(f - c) / c:+.1%})" if c else f"{name} {f - c:+.4f}")
        lines += ["", f"federated − centralised gap (means over seeds): {'; '.join(gaps)}"]
    return lines


def main(argv=None) -> None:
    args, extra = parse_args(argv)
    common.require_feddmmr()
    data_dir, top_users, label = common.dataset(args.data, args.top_users)
    folder = settings_folder(Path(args.out), label, extra)
    failed = 0
    for mode in args.modes:
        for seed in args.seeds:
            run_dir = folder / mode / f"seed{seed}"
            command = command_for(run_dir, mode, seed, args, data_dir, top_users, extra)
            if command is None:
                print(f"{mode} seed {seed}: done ({run_dir / 'final.json'})")
                continue
            print(f"{mode} seed {seed}: command: {' '.join(command)}", flush=True)
            if args.dry_run:
                continue
            print(f"  running; follow it with: tail -f {run_dir / 'train.log'}", flush=True)
            failed += not execute(command, run_dir)

    results = {
        mode: [r for s in args.seeds if (r := read_run(folder / mode / f"seed{s}"))] for mode in args.modes
    }
    if not any(results.values()):
        print("no finished runs yet")
    else:
        setting = " ".join(common.train_command(data_dir, top_users, {}, extra)[4:]) or "the defaults"
        protocols = ", ".join(sorted({r["eval"] for runs in results.values() for r in runs}))
        lines = [
            f"data {label}: test metrics ({protocols}) of the best validated round; seeds {' '.join(map(str, args.seeds))}",
            f"setting: {setting}",
            "",
            *table(results, len(args.seeds)),
        ]
        print("\n" + "\n".join(lines))
        if args.write_docs and not args.dry_run:
            body = "\n".join([f"### Quality: {folder.name}", "", *lines, "", f"_{common.machine_line()}_"])
            common.write_section(args.write_docs, f"quality-{folder.name}", body)
            print(f"wrote {args.write_docs}")
    if failed:
        sys.exit(f"{failed} run(s) failed")


if __name__ == "__main__":
    main()
