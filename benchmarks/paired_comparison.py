"""Two models on the same users: the per-user difference of their best models' metrics, paired.

Runs are paired in the order given (`--a` RUN_A0 RUN_A1 ... against `--b` RUN_B0 RUN_B1 ...: one pair
per seed). Each best model ranks its run's validation and test users with both protocols: the
run's saved 1:N sampled candidates, and full ranking (every item the user has not read). For
each pair and each user the script takes B's HR@10 and NDCG@10 minus A's; it prints each pair's
mean difference and, pooled over the pairs, the mean and its standard error. Pairing removes the
users' own difficulty from the comparison, which the spread of two separate means keeps: on
1,000 users one run's HR@10 has a binomial standard error of about 0.015.

Two summaries over the pairs:
- pooled: every (pair, user) difference together. Its standard error treats them as
  independent; seeds of one split share their users, so it understates the uncertainty.
- across pairs: the mean of the pairs' mean differences, with the standard error of their spread
  (one value per seed, so it holds the training's seed-to-seed noise) and how many pairs B leads.

    python benchmarks/paired_comparison.py --a FEDSASREC_S0 FEDSASREC_S1 --b FEDDMMR_S0 FEDDMMR_S1

With `--users warm` (or `cold`), runs trained with `--cold-items` are compared on the test users
whose test item is trained (or new) only; validation users are all warm.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MODES = ("sampled", "full")


def mean_and_error(values: np.ndarray) -> str:
    error = f"{values.std(ddof=1) / np.sqrt(len(values)):.4f}" if len(values) > 1 else "n/a"
    return f"{values.mean():+.4f} (se {error})"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--a", nargs="+", type=Path, required=True, help="the reference model's runs, one per seed"
    )
    p.add_argument(
        "--b", nargs="+", type=Path, required=True, help="the compared model's runs, in the same order"
    )
    p.add_argument(
        "--users",
        choices=("all", "warm", "cold"),
        default="all",
        help="runs with --cold-items: only the test users whose test item is trained (warm) or new (cold)",
    )
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if len(args.a) != len(args.b):
        sys.exit(
            f"--a has {len(args.a)} runs and --b {len(args.b)}: give one run of each per seed, paired in order"
        )
    common.require_feddmmr()
    from feddmmr.best_model import load_best_model
    from feddmmr.evaluation import user_metrics

    torch.set_num_threads(args.threads)
    print(common.machine_line())

    def metrics_by_user(run_dir: Path) -> dict[tuple[str, str], dict[str, np.ndarray]]:
        best = load_best_model(run_dir)
        users = {"valid": slice(None), "test": slice(None)}
        if args.users != "all":
            groups = best.split.user_groups()
            if not groups:
                sys.exit(f"{run_dir}: --users {args.users} needs runs trained with --cold-items")
            users["test"] = groups[args.users]
        return {
            (split, mode): user_metrics(best.ranks(eval_set, mode)[users[split]], 10)
            for split, eval_set in (("valid", best.valid_set), ("test", best.test_set))
            for mode in MODES
        }

    pooled: dict[tuple[str, str, str], list[np.ndarray]] = {}
    for run_a, run_b in zip(args.a, args.b):
        a, b = metrics_by_user(run_a), metrics_by_user(run_b)
        print(f"{run_b} - {run_a}:")
        for key in a:
            if len(a[key]["HR@10"]) != len(b[key]["HR@10"]):
                sys.exit(f"{run_a} and {run_b} evaluate different users: not a pair of runs on one split")
            parts = []
            for metric in ("HR@10", "NDCG@10"):
                difference = b[key][metric] - a[key][metric]
                pooled.setdefault((*key, metric), []).append(difference)
                parts.append(
                    f"{metric} {b[key][metric].mean():.4f} - {a[key][metric].mean():.4f} = {difference.mean():+.4f}"
                )
            print(f"  {key[0]:>5} {key[1]:>7}: " + " | ".join(parts), flush=True)
    print(f"pooled over {len(args.a)} pair(s), B - A:")
    for split in ("valid", "test"):
        for mode in MODES:
            print(
                f"  {split:>5} {mode:>7}: "
                + " | ".join(
                    f"{metric} {mean_and_error(np.concatenate(pooled[(split, mode, metric)]))}"
                    for metric in ("HR@10", "NDCG@10")
                )
            )
    print(
        f"across the {len(args.a)} pair(s), B - A: mean of the pairs' means (se of their spread), pairs where B leads:"
    )
    for split in ("valid", "test"):
        for mode in MODES:
            parts = []
            for metric in ("HR@10", "NDCG@10"):
                means = np.array([difference.mean() for difference in pooled[(split, mode, metric)]])
                parts.append(
                    f"{metric} {mean_and_error(means)}, {int((means > 0).sum())} of {len(means)} ahead"
                )
            print(f"  {split:>5} {mode:>7}: " + " | ".join(parts))


if __name__ == "__main__":
    main()
