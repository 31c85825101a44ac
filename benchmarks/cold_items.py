"""New items: trained models beside the obvious baselines, by group of users, both protocols.

Runs trained with `--cold-items` (the same data and seeds for every label) are reloaded; each best
model ranks its run's test users with the run's 1:N candidates and with full ranking, and the
metrics are split by the user's test item: new (`cold`, never trained on), trained (`warm`) and
all. Beside them, on the same users and candidates of each seed's run: popularity (training
interactions) and the content-only nearest neighbour (the candidate's highest feature cosine with
the user's last K items, for each K of `--recent`). Each figure is the mean over the seeds ± its
standard error. A second table ranks each new-item user's test item among the new items alone: the
most that full ranking could give them, whatever the level of the new items' scores.

    python benchmarks/cold_items.py --runs fedsasrec=RUN_S0,RUN_S1,RUN_S2 feddmmr=RUN_S0,RUN_S1,RUN_S2 \\
        --features text=features/ml-1m-text.npz --recent 1 5
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
GROUPS = ("cold", "warm", "all")
METRICS = ("HR@10", "NDCG@10")


def grouped(ranks: np.ndarray, split) -> dict[str, dict]:
    from feddmmr.evaluation import group_metrics

    groups = split.user_groups()
    if not groups:
        raise SystemExit("a run without new items: train with --cold-items FRACTION")
    return group_metrics(ranks, {**groups, "all": np.ones(len(ranks), dtype=bool)})


def figures(model, best, mode: str) -> dict[str, dict]:
    from feddmmr.evaluation import held_out_ranks

    slots = best.memory_slots if model is best.model else None
    return grouped(
        held_out_ranks(model, best.test_set, mode, precision=best.precision, memory=slots), best.split
    )


@torch.no_grad()
def among_new_items(model, best) -> float:
    """HR@10 of the new-item users' test item ranked among the new items alone: the most full
    ranking could give them if every trained item ranked below the new ones (how well the content
    alone orders new items)."""
    users = np.flatnonzero(best.split.user_groups()["cold"])
    new_items = torch.from_numpy(np.flatnonzero(best.split.cold))
    slots = (
        ()
        if best.memory_slots is None or model is not best.model
        else tuple(m[users] for m in best.memory_slots)
    )
    was_training = model.training
    scores = model.eval().score_all_last(best.test_set.inputs[users], *slots).float()
    model.train(was_training)
    target = scores.gather(1, best.test_set.targets[users].unsqueeze(1))
    rank = (scores[:, new_items] >= target).sum(
        1
    ) - 1  # ties count against the target, as in evaluation; less itself
    return float((rank < 10).double().mean())


def summary(values: list[float]) -> str:
    values = np.asarray(values, dtype=np.float64)
    error = f" ± {values.std(ddof=1) / np.sqrt(len(values)):.3f}" if len(values) > 1 else ""
    return f"{values.mean():.3f}{error}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--runs",
        nargs="+",
        required=True,
        metavar="LABEL=RUN[,RUN...]",
        help="each label's runs, one per seed, in the same seed order for every label",
    )
    p.add_argument(
        "--features", required=True, metavar="NAME=FILE", help="the item features of the content baseline"
    )
    p.add_argument(
        "--recent", nargs="+", type=int, default=[1, 5], help="the content baseline's K last items"
    )
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    common.require_feddmmr()
    from feddmmr.best_model import load_best_model
    from feddmmr.features.store import load_modality
    from feddmmr.model.baselines import ContentNeighbours, Popularity

    torch.set_num_threads(args.threads)
    print(common.machine_line())
    labelled = [
        (label, [Path(r) for r in runs.split(",")]) for label, runs in (s.split("=", 1) for s in args.runs)
    ]
    seeds = {len(runs) for _, runs in labelled}
    if len(seeds) != 1:
        raise SystemExit(f"every label needs the same number of runs (one per seed), got {sorted(seeds)}")
    rows: dict[str, dict] = {}  # label -> (mode, group, metric) -> values over seeds
    among: dict[str, list[float]] = {}  # label -> new-item users' HR@10 among the new items, over seeds

    def add(label: str, mode: str, result: dict[str, dict]) -> None:
        for group in GROUPS:
            for metric in (*METRICS, "users"):
                rows.setdefault(label, {}).setdefault((mode, group, metric), []).append(
                    result[group].get(metric, np.nan)
                )

    for index in range(seeds.pop()):
        for position, (label, runs) in enumerate(labelled):
            best = load_best_model(runs[index])
            for mode in MODES:
                add(label, mode, figures(best.model, best, mode))
            among.setdefault(label, []).append(among_new_items(best.model, best))
            if position:
                continue
            # The baselines on the first label's run of this seed (every label shares its split).
            split = best.split
            features = load_modality(args.features, split.data.item_ids).matrix
            baselines = {
                "popularity": Popularity(split.train_counts()),
                **{f"content kNN (last {k})": ContentNeighbours(features, k) for k in args.recent},
            }
            for name, model in baselines.items():
                for mode in MODES:
                    add(name, mode, figures(model, best, mode))
                among.setdefault(name, []).append(among_new_items(model, best))
        print(f"seed {index}: {', '.join(str(runs[index]) for _, runs in labelled)}", flush=True)

    header = ["model", "users"] + [
        f"{group} {'1:N' if mode == 'sampled' else 'full'} {metric}"
        for group in GROUPS
        for mode in MODES
        for metric in METRICS
    ]
    table = [header]
    for label, values in rows.items():
        users = "/".join(str(int(np.mean(values[("sampled", g, "users")]))) for g in GROUPS)
        table.append(
            [label, users]
            + [
                summary(values[(mode, group, metric)])
                for group in GROUPS
                for mode in MODES
                for metric in METRICS
            ]
        )
    print("| " + " | ".join(table[0]) + " |")
    print("|" + "---|" * len(table[0]))
    for row in table[1:]:
        print("| " + " | ".join(row) + " |")
    print("\nnew-item users, test item ranked among the new items only (a ceiling for full ranking):")
    print("| model | HR@10 among new items |\n|---|---|")
    for label, values in among.items():
        print(f"| {label} | {summary(values)} |")


if __name__ == "__main__":
    main()
