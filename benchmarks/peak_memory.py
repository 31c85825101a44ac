"""Peak memory of a whole short `feddmmr train` run, measured from outside (the child's peak RSS).

    python benchmarks/peak_memory.py                        # 3 rounds, seed setting, ML-1M top-1000
    python benchmarks/peak_memory.py --engine sequential
    python benchmarks/peak_memory.py -- --chunk-clients 8   # extra `feddmmr train` flags after --
    python benchmarks/peak_memory.py --quick                # tiny synthetic run (smoke test)

The issue's bar: peak memory of the whole run under 1 GB (the original code: 1.9 GB). The run
includes data loading, the rounds, the validation of the last round and the final test. The
child is a fresh process, so the figure is the run's alone, not this script's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
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
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--engine", default="vectorized", choices=("vectorized", "sequential"))
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--run-dir", help="keep the run here (default: a temporary folder, removed after)")
    p.add_argument("--quick", action="store_true", help="tiny synthetic run (smoke test)")
    p.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    p.add_argument("--write-docs", nargs="?", const=str(common.DOCS_RESULTS), metavar="FILE")
    args = p.parse_args(own)
    setting = {
        **common.SEED_SETTING,
        "num_rounds": args.rounds,
        "engine": args.engine,
        "threads": args.threads,
    }
    if args.quick:
        if args.data == "ml-1m-top1000":
            args.data = "synthetic"
        args.top_users = args.top_users or 40
        setting.update(hidden_dim=32, num_rounds=1)
    return args, setting, extra


def main(argv=None) -> None:
    args, setting, extra = parse_args(argv)
    common.require_feddmmr()
    data_dir, top_users, label = common.dataset(args.data, args.top_users)
    with tempfile.TemporaryDirectory(prefix="feddmmr-peak-memory-") as tmp:
        run_dir = args.run_dir or str(Path(tmp) / "run")
        command = common.train_command(data_dir, top_users, {**setting, "run_dir": run_dir}, extra)
        print("command:", " ".join(command))
        if args.dry_run:
            return
        print(common.machine_line())
        started = time.perf_counter()
        # Output to a file, not a pipe: a chatty child must never block on a full pipe.
        with open(Path(tmp) / "train.log", "w+") as log:
            code = subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=common.ROOT, env=common.child_env()
            ).returncode
            log.seek(0)
            output = log.read()
        wall = time.perf_counter() - started
    if code != 0:
        print(output[-4000:])
        sys.exit(f"feddmmr train failed with exit status {code}")
    # RUSAGE_CHILDREN: the largest waited-for child; this script starts only the one.
    peak = common.peak_rss_mb(children=True)
    lines = [
        f"setting: {label} | {' '.join(command[4:])}",
        f"whole run: {wall:.1f} s wall",
        f"peak RSS of the run: {peak:.0f} MiB",
        f"bar (issue): under {common.MEMORY_BAR_MB:.0f} MiB: {'yes' if peak < common.MEMORY_BAR_MB else 'NO'} | "
        f"original code: {common.REFERENCE['peak_rss_mb']:.0f} MiB ({peak / common.REFERENCE['peak_rss_mb']:.2f} of it)",
    ]
    print("\n".join(lines))
    if args.write_docs:
        common.write_result(
            args.write_docs,
            f"peak-memory-{label}-{setting['engine']}",
            f"Peak memory: {label}, {setting['engine']}, {setting['num_rounds']} rounds",
            lines,
        )


if __name__ == "__main__":
    main()
