"""Seconds per round, validation seconds and peak memory of training recipes, side by side.

    python benchmarks/recipe_cost.py                                   # the short_history preset against the default
    python benchmarks/recipe_cost.py --recipes default long_history -- --eval full
    python benchmarks/recipe_cost.py --data ml-1m --rounds 3
    python benchmarks/recipe_cost.py --quick                           # tiny synthetic run (smoke test)

A recipe is `default` (the flags' defaults) or a preset name (`feddmmr configs`). Each recipe runs
as its own `feddmmr train` child for `--rounds` rounds (validated at the last), the recipes taking
turns `--repeats` times, so that load from other jobs hits all of them alike. Per recipe: the
median seconds of the rounds after the first (which pays one-off costs), the median validation
seconds, and the child's peak RSS (from wait4: that child's alone).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def parse_args(argv=None):
    own, extra = common.split_passthrough(argv)
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data", default="ml-1m-top1000", help="ml-1m-top1000 (default), ml-1m, synthetic, or a path"
    )
    p.add_argument("--top-users", type=int)
    p.add_argument(
        "--recipes", nargs="+", default=["short_history", "default"], help="default, or preset names"
    )
    p.add_argument("--rounds", type=int, default=4, help="rounds per child (the first is not timed)")
    p.add_argument("--repeats", type=int, default=2, help="children per recipe, in turns")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--quick", action="store_true", help="tiny synthetic run (smoke test)")
    p.add_argument("--write-docs", nargs="?", const=str(common.DOCS_RESULTS), metavar="FILE")
    args = p.parse_args(own)
    if args.rounds < 2:
        p.error("--rounds must be at least 2: the first round is not timed")
    if args.quick:
        args.data, args.top_users, args.rounds, args.repeats = "synthetic", args.top_users or 40, 2, 1
        extra = ["--hidden-dim", "16", "--num-heads", "2", *extra]
    return args, extra


def run_child(command: list[str], log_path: Path) -> tuple[int, float]:
    """(exit status, peak RSS in MiB) of one child, measured by wait4 for that child alone."""
    with open(log_path, "w") as log:  # a file, not a pipe: a chatty child never blocks
        child = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=common.ROOT, env=common.child_env()
        )
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, usage.ru_maxrss / 1024


def main(argv=None) -> None:
    args, extra = parse_args(argv)
    common.require_feddmmr()
    data_dir, top_users, label = common.dataset(args.data, args.top_users)
    print(common.machine_line())
    figures = {recipe: {"round": [], "valid": [], "peak": []} for recipe in args.recipes}
    commands = {}
    with tempfile.TemporaryDirectory(prefix="feddmmr-recipe-cost-") as tmp:
        for repeat in range(args.repeats):
            for recipe in args.recipes:
                run_dir = Path(tmp) / f"{recipe}-{repeat}"
                setting = {
                    "num_rounds": args.rounds,
                    "validate_every": args.rounds,
                    "threads": args.threads,
                    "run_dir": run_dir,
                }
                if recipe != "default":
                    setting = {"config": recipe, **setting}
                command = common.train_command(data_dir, top_users, setting, extra)
                commands[recipe] = " ".join(command[3:]).replace(str(run_dir), "RUN")
                code, peak = run_child(command, Path(tmp) / f"{recipe}-{repeat}.log")
                if code != 0:
                    print((Path(tmp) / f"{recipe}-{repeat}.log").read_text()[-4000:])
                    sys.exit(f"{recipe}: feddmmr train failed with exit status {code}")
                records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
                figures[recipe]["round"] += [r["train_seconds"] for r in records[1:]]
                figures[recipe]["valid"] += [r["eval_seconds"] for r in records if r.get("validated")]
                figures[recipe]["peak"].append(peak)
                print(
                    f"{recipe} #{repeat}: rounds {[round(r['train_seconds'], 1) for r in records]} s, "
                    f"peak {peak:,.0f} MiB",
                    flush=True,
                )
    first = args.recipes[0]
    lines = [
        f"data: {label}, {args.rounds} rounds a child (round 1 untimed), {args.repeats} children a recipe, "
        f"{args.threads} threads"
    ]
    for recipe in args.recipes:
        f = figures[recipe]
        lines += [
            f"{recipe}: {commands[recipe]}",
            f"  round: {common.spread(f['round'])} | validation: {common.spread(f['valid'])} | "
            f"peak RSS {max(f['peak']):,.0f} MiB | round time / {first}'s: "
            f"{common.median(f['round']) / common.median(figures[first]['round']):.2f}",
        ]
    print("\n".join(lines))
    if args.write_docs:
        common.write_result(args.write_docs, f"recipe-cost-{label}", f"Cost of the recipes: {label}", lines)


if __name__ == "__main__":
    main()
