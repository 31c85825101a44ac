"""What an honest-but-curious server learns from the updates it receives: which items each
sampled user trained on (interaction-level membership inference, Yuan et al. WWW 2023).

    python benchmarks/privacy_leakage.py                 # ML-1M top-1000 (~10 min on 2 cores)
    python benchmarks/privacy_leakage.py --quick         # tiny synthetic run (smoke test)
    python benchmarks/privacy_leakage.py --write-docs    # also put the table into docs/RESULTS.md

For each setting, the run trains `--warmup` rounds, then in the next round captures every sampled
client's item-embedding update exactly as the server receives it (after any DP clipping; the
DP noise is added by the server to the sum, so it never touches an individual update). Every
setting starts from the short_history preset (50 positions, 4 negatives a target). The
attack scores each item by the L2 norm of its row's change and ranks items; the truth is the
set of items in the user's training sequence. Reported per setting, averaged over the round's
users: ROC AUC, precision@10, and R-precision (precision at k = the user's number of items).

"secagg nodes of S": the server sees only sums of S users' updates (SecAgg+ on Flower nodes of
S users each); each user is then scored from the sum of their node.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script from anywhere
import common  # noqa: E402

from feddmmr.config import TrainConfig  # noqa: E402
from feddmmr.engines import make_engine  # noqa: E402
from feddmmr.federated.privacy import privacy_spent  # noqa: E402
from feddmmr.model.sasrec import ITEM_TABLE  # noqa: E402
from feddmmr.train import prepare_run, run_round  # noqa: E402

SETTINGS = {  # name -> TrainConfig overrides
    "4 negatives a target": {},
    "64 negatives": {"num_negatives": 64},
    "256 shared negatives": {"negatives": "shared", "num_negatives": 256},
    "full softmax (ce-full)": {"loss": "ce-full"},
    "DP clip 1, noise 0.5": {"dp_clip_norm": 1.0, "dp_noise_multiplier": 0.5},
    "DP clip 1, noise 1.0": {"dp_clip_norm": 1.0, "dp_noise_multiplier": 1.0},
    "DP clip 1, noise 2.0": {"dp_clip_norm": 1.0, "dp_noise_multiplier": 2.0},
    "update noise 1": {"update_noise": 1.0},
    "update noise 3": {"update_noise": 3.0},
}
NODE_SIZES = (5, 25)  # SecAgg+ node sizes, measured on the 4-negatives setting's captured updates


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
    p.add_argument(
        "--warmup", type=int, default=5, help="rounds trained before the round whose updates are captured"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--settings",
        nargs="+",
        choices=SETTINGS,
        default=list(SETTINGS),
        metavar="NAME",
        help=f"the settings to measure (default: all): {', '.join(repr(n) for n in SETTINGS)}",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--quick", action="store_true", help="a tiny synthetic run: checks the script, measures nothing"
    )
    p.add_argument("--write-docs", action="store_true", help=f"write the table into {common.DOCS_RESULTS}")
    return p.parse_args(argv)


class CapturingEngine:
    """An engine that keeps every client's item-table change, as aggregated, in `changes`, and the
    clients' users in the same order in `users` (the engine reports clients in the order it hands
    them to the aggregator)."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.changes: list[torch.Tensor] = []
        self.users: list[int] = []

    def train(self, context, global_params, clients, local, aggregate, progress=None):
        start = global_params[ITEM_TABLE].detach()

        def capture(client_params, weights):
            self.changes.append((client_params[ITEM_TABLE].detach() - start).float().cpu())
            return aggregate(client_params, weights)

        result = self.engine.train(context, global_params, clients, local, capture, progress)
        self.users = [report.user for report in result.reports]
        return result


def auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """P(a true item outscores a false one), ties counting half."""
    positives, negatives = np.sort(scores[truth]), np.sort(scores[~truth])
    below = np.searchsorted(negatives, positives, "left")
    equal = np.searchsorted(negatives, positives, "right") - below
    return float((below + 0.5 * equal).sum() / (len(positives) * len(negatives)))


def precision_at(scores: np.ndarray, truth: np.ndarray, k: int) -> float:
    top = np.argsort(-scores, kind="stable")[:k]
    return float(truth[top].mean())


def attack(row_norms: torch.Tensor, truths: list[np.ndarray]) -> dict[str, float]:
    """Mean AUC, precision@10 and R-precision of ranking items (rows 1..N) by `row_norms`."""
    out = {"AUC": [], "P@10": [], "R-prec": []}
    for scores, truth in zip(row_norms.numpy()[:, 1:], truths):
        out["AUC"].append(auc(scores, truth))
        out["P@10"].append(precision_at(scores, truth, 10))
        out["R-prec"].append(precision_at(scores, truth, int(truth.sum())))
    return {k: float(np.mean(v)) for k, v in out.items()}


def measure(name: str, overrides: dict, args, data_dir, top_users, tmp: str) -> tuple[dict, list[str]]:
    small = (
        dict(max_seq_len=10, hidden_dim=16, num_heads=2, num_blocks=1, num_negatives_eval=20)
        if args.quick
        else {}
    )
    config = TrainConfig(
        data_dir=data_dir,
        top_users=top_users,
        seed=args.seed,
        threads=args.threads,
        run_dir=str(Path(tmp) / name.replace(" ", "_").replace(",", "")),
        **{**common.short_history(), **small, **overrides},
    )
    run = prepare_run(config)
    engine = make_engine(
        "vectorized",
        run.model,
        chunk_clients=config.chunk_clients,
        chunk_windows=config.chunk_windows,
        **run.batch_settings().engine_negatives(),
    )
    for round_number in range(1, args.warmup + 1):
        run_round(run, engine, round_number)
    capturing = CapturingEngine(engine)
    record = run_round(run, capturing, args.warmup + 1)
    changes = torch.cat(capturing.changes)  # [clients, items + 1, d]
    users = capturing.users
    assert len(users) == len(changes)
    truths = []
    for user in users:
        truth = np.zeros(run.split.num_items, dtype=bool)
        truth[np.asarray(run.split.train_sequence(user)) - 1] = True
        truths.append(truth)
    rows = {name: attack(changes.norm(dim=-1), truths)}
    if config.dp_clip_norm is not None:
        epsilon = privacy_spent(
            config.dp_noise_multiplier, config.client_fraction, config.num_rounds, config.dp_delta
        )
        rows[name]["epsilon"] = epsilon
    if not overrides:  # SecAgg+: the server sees each node's sum
        order = np.random.default_rng(args.seed).permutation(len(users))
        for size in NODE_SIZES:
            node_norms = torch.empty(len(users), changes.shape[1])
            for start in range(0, len(order), size):
                members = order[start : start + size]
                node_norms[members] = changes[members].sum(0).norm(dim=-1)
            rows[f"secagg nodes of {size}"] = attack(node_norms, truths)
    mean_items = float(np.mean([t.sum() for t in truths]))
    notes = [
        f"{name}: round {args.warmup + 1}, {len(users)} clients, {mean_items:.0f} training items per user "
        f"of {run.split.num_items}, round loss {record['train_loss']:.4f}"
    ]
    return rows, notes


def main(argv=None) -> None:
    args = parse_args(argv)
    data_dir, top_users, label = common.dataset(
        "synthetic" if args.quick else args.data, 50 if args.quick else args.top_users
    )
    if args.quick:
        args.warmup = 1
    print(common.machine_line())
    lines = [
        f"setting: {label}, seed {args.seed}, updates of round {args.warmup + 1} (after {args.warmup} rounds), "
        f"attack: rank items by the norm of their embedding row's change"
    ]
    table = {}
    with tempfile.TemporaryDirectory(prefix="feddmmr-leakage-") as tmp:
        for name in args.settings:
            rows, notes = measure(name, SETTINGS[name], args, data_dir, top_users, tmp)
            table.update(rows)
            for note in notes:
                print(note, flush=True)
    lines.append(f"{'what the server sees':<26} {'AUC':>6} {'P@10':>6} {'R-prec':>7}  epsilon")
    for name, row in table.items():
        epsilon = row.get("epsilon")
        shown = "" if epsilon is None else ("inf" if math.isinf(epsilon) else f"{epsilon:.2f}")
        lines.append(f"{name:<26} {row['AUC']:>6.3f} {row['P@10']:>6.3f} {row['R-prec']:>7.3f}  {shown}")
    for line in lines[1:]:
        print(line)
    if args.write_docs and not args.quick and args.settings == list(SETTINGS):
        common.write_result(
            common.DOCS_RESULTS,
            "privacy_leakage",
            "Interaction leakage to a curious server (benchmarks/privacy_leakage.py)",
            lines,
        )


if __name__ == "__main__":
    main()
