"""Item promotion by fake clients against each aggregation rule: ER@10 of the targets, and the
genuine users' test HR@10 and NDCG@10, with and without an attack.

    python benchmarks/attacks.py                          # ML-1M top-1000, 36 runs of 20 rounds (~50 min on 2 cores)
    python benchmarks/attacks.py --aggregators fedavg krum --attacks none model-poisoning:0.01
    python benchmarks/attacks.py --quick                  # tiny synthetic runs (smoke test)
    python benchmarks/attacks.py --write-docs             # also put the table into docs/RESULTS.md

Every run trains `--rounds` rounds (validated every 5, the best validated round tested), with the
short_history recipe (the default until long histories replaced it) and `--aggregator`; an attack
is KIND:FRACTION (fake clients as a share of the users). ER@10 is measured on the best model over
the test inputs, ranking every item the user has not read; the same targets (chosen by the seed
among the coldest fifth of items) are measured without an attack too.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script from anywhere
import common  # noqa: E402

from feddmmr.best_model import load_best_model  # noqa: E402
from feddmmr.config import TrainConfig  # noqa: E402
from feddmmr.data.load import load_sequences  # noqa: E402
from feddmmr.data.split import leave_one_out  # noqa: E402
from feddmmr.federated.attacks import Attack, exposure_rate  # noqa: E402
from feddmmr.train import train  # noqa: E402

AGGREGATORS = ("fedavg", "norm-bound", "median", "trimmed-mean", "krum", "row-bound")
ATTACKS = (
    "none",
    "data-poisoning:0.01",
    "model-poisoning:0.01",
    "boosted-model-poisoning:0.01",
    "data-poisoning:0.05",
    "model-poisoning:0.05",
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data", default="ml-1m-top1000", help="ml-1m-top1000 (default), ml-1m, synthetic, or a path"
    )
    p.add_argument(
        "--top-users", type=int, help="keep the N most active users (default: 1000 for ml-1m-top1000)"
    )
    p.add_argument("--aggregators", nargs="+", default=list(AGGREGATORS))
    p.add_argument("--attacks", nargs="+", default=list(ATTACKS), help="none or KIND:FRACTION")
    p.add_argument("--targets", type=int, default=5)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--quick", action="store_true", help="tiny synthetic runs: checks the script, measures nothing"
    )
    p.add_argument("--write-docs", action="store_true", help=f"write the table into {common.DOCS_RESULTS}")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    data_dir, top_users, label = common.dataset(
        "synthetic" if args.quick else args.data, 60 if args.quick else args.top_users
    )
    small = (
        dict(max_seq_len=10, hidden_dim=16, num_heads=2, num_blocks=1, num_negatives_eval=20)
        if args.quick
        else {}
    )
    rounds = 2 if args.quick else args.rounds
    print(common.machine_line())
    split = leave_one_out(load_sequences(data_dir, top_users=top_users))
    targets = Attack.plan("data-poisoning", 0.01, args.targets, split, 50, args.seed).targets
    lines = [
        f"setting: {label}, seed {args.seed}, {rounds} rounds (validated every 5; the best tested), "
        f"{args.targets} cold targets {targets.tolist()} (dense ids)",
        f"{'aggregator':<13} {'attack':<22} {'ER@10':>6} {'test HR@10':>10} {'NDCG@10':>8}",
    ]
    print(lines[0], lines[1], sep="\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="feddmmr-attacks-") as tmp:
        for aggregator in args.aggregators:
            for attack in args.attacks:
                kind, _, fraction = attack.partition(":")
                run_dir = Path(tmp) / f"{aggregator}-{kind}-{fraction}"
                config = TrainConfig(
                    data_dir=data_dir,
                    top_users=top_users,
                    seed=args.seed,
                    threads=args.threads,
                    num_rounds=rounds,
                    validate_every=5 if not args.quick else 1,
                    patience=0,
                    aggregator=aggregator,
                    attack=None if kind == "none" else kind,
                    attack_fraction=float(fraction or 0.01),
                    attack_targets=args.targets,
                    run_dir=str(run_dir),
                    **{**common.short_history(), **small},
                )
                result = train(config)
                best = load_best_model(run_dir)
                exposure = exposure_rate(best.model, best.test_set, targets)
                test = result.final["test"]
                line = f"{aggregator:<13} {attack:<22} {exposure:>6.3f} {test['HR@10']:>10.4f} {test['NDCG@10']:>8.4f}"
                lines.append(line)
                print(line, flush=True)
    if args.write_docs and not args.quick:
        common.write_result(
            common.DOCS_RESULTS,
            "attacks",
            "Item promotion against each aggregation rule (benchmarks/attacks.py)",
            lines,
        )


if __name__ == "__main__":
    main()
