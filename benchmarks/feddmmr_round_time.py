"""FedDMMR's federated round against FedSASRec's, side by side in one process (issue #3's 2x bar).

    python benchmarks/feddmmr_round_time.py                      # synthetic data, random 384-d text features
    python benchmarks/feddmmr_round_time.py --data ml-1m-top1000 --text ml-1m-text.npz
    python benchmarks/feddmmr_round_time.py --quick              # smoke test: tiny model, 2 timed rounds
    python benchmarks/feddmmr_round_time.py --content-history 5 --modality-objective holdout   # with these options
    python benchmarks/feddmmr_round_time.py --content-history 5 --modality-objective holdout-backbone
    python benchmarks/feddmmr_round_time.py --data ml-1m-top1000 --text ml-1m-text.npz --recipe short_history \
        --content-history 5 --modality-objective holdout-backbone --item-tower content --cold-items 0.15  # feddmmr_cold

Both models train with the defaults of `feddmmr train` on the vectorised engine; their timed rounds
are interleaved (FedDMMR, FedSASRec, FedSASRec, FedDMMR, ...) so that a change in the machine's
load hits both. Prints each model's round times, their medians and the ratio of the medians.
Without --text, each item gets a random 384-d feature (the size of all-MiniLM-L6-v2's), which costs
the same as a real text feature.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default="synthetic", help="synthetic (default), ml-1m-top1000, ml-1m, or a path")
    p.add_argument("--text", help="item features for FedDMMR (default: random 384-d features)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per model, after one untimed round")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="tiny model and 2 timed rounds (smoke test)")
    p.add_argument(
        "--content-history", type=int, default=0, help="FedDMMR's --content-history (default 0: off)"
    )
    p.add_argument(
        "--modality-objective",
        default="joint",
        choices=("joint", "holdout", "holdout-backbone"),
        help="FedDMMR's --modality-objective",
    )
    p.add_argument("--item-tower", default="id", choices=("id", "content"), help="FedDMMR's --item-tower")
    p.add_argument("--cold-items", type=float, default=0.0, help="both models: --cold-items (default 0: off)")
    p.add_argument(
        "--recipe",
        default="default",
        choices=("default", "short_history"),
        help="both models: the default recipe or the short_history preset's",
    )
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    common.require_feddmmr()
    import torch

    from feddmmr.config import TrainConfig
    from feddmmr.data.load import load_sequences
    from feddmmr.engines import make_engine
    from feddmmr.features.store import save_features
    from feddmmr.train import prepare_run, run_round

    torch.set_num_threads(args.threads)
    data_dir, top_users, label = common.dataset(args.data)
    rounds = 2 if args.quick else args.rounds
    small = dict(hidden_dim=16, num_heads=2, num_blocks=1, max_seq_len=10) if args.quick else {}
    with tempfile.TemporaryDirectory(prefix="feddmmr-round-time-") as scratch:
        text = args.text
        if text is None:
            items = np.asarray(load_sequences(data_dir, top_users=top_users).item_ids[1:])
            text = save_features(
                Path(scratch) / "text.npz",
                items,
                np.random.default_rng(0).normal(size=(len(items), 384)).astype(np.float32),
            )
        models = {
            "feddmmr": dict(
                model="feddmmr",
                modality=[f"text={text}"],
                content_history=args.content_history,
                modality_objective=args.modality_objective,
                item_tower=args.item_tower,
            ),
            "fedsasrec": dict(model="fedsasrec"),
        }
        recipe = common.short_history() if args.recipe == "short_history" else {}
        runs = {}
        for name, settings in models.items():
            run = prepare_run(
                TrainConfig(
                    **{
                        **recipe,
                        "data_dir": data_dir,
                        "top_users": top_users,
                        "threads": args.threads,
                        "cold_items": args.cold_items,
                        "run_dir": str(Path(scratch) / name),
                        **small,
                        **settings,
                    }
                )
            )
            engine = make_engine(
                "vectorized",
                run.model,
                chunk_clients=run.config.chunk_clients,
                chunk_windows=run.config.chunk_windows,
                **run.batch_settings().engine_negatives(),
            )
            run_round(run, engine, 1)  # untimed: first-call costs
            runs[name] = (run, engine)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for i in range(rounds):
            for name in list(runs) if i % 2 == 0 else list(runs)[::-1]:
                run, engine = runs[name]
                started = time.perf_counter()
                run_round(run, engine, i + 2)
                times[name].append(time.perf_counter() - started)
    print(common.machine_line())
    print(
        f"setting: {label} | defaults of feddmmr train{' (tiny model: --quick)' if args.quick else ''} | "
        f"vectorised engine | threads={args.threads} | text features: {args.text or 'random 384-d'} | "
        f"recipe {args.recipe}, new items {args.cold_items} | FedDMMR content history {args.content_history}, "
        f"modality objective {args.modality_objective}, item tower {args.item_tower}"
    )
    for name, values in times.items():
        print(f"round time {name}: {common.spread(values)}  [{', '.join(f'{t:.2f}' for t in values)}]")
    print(
        f"FedDMMR vs FedSASRec round: {common.median(times['feddmmr']) / common.median(times['fedsasrec']):.2f}x "
        f"(ratio of medians)"
    )


if __name__ == "__main__":
    main()
