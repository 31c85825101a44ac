"""FedDMMR vs FedSASRec, and FedDMMR's parts, on the same split and round budget.

Every variant trains the same number of rounds with the same pinned recipe (`RECIPE`: the
federated defaults of `feddmmr train` when it was last run, written out so that a later change of
default cannot mix settings between the rows of one table); only the variant's flags differ:

    fedsasrec      FedSASRec (the baseline: the same rounds without any multimodal part)
    feddmmr        FedDMMR with the text modality (memory + expert + gate)
    two-modalities FedDMMR with text and genre modalities, weighed by the learned router
    no-router      two-modalities with uniform router weights (`--router uniform`)
    alignment      feddmmr + the drift-adaptive alignment loss (lambda 0.1)
    novelty-0.4    feddmmr with the long-term memory's novelty threshold at 0.4 (seed's: 0.583)
    content-match  feddmmr + the content match with the last 5 items (`--content-history 5`, not in
                   the seed's design)
    held-out       content-match with the modality side trained on held-out targets only
                   (`--modality-objective holdout`, not in the seed's design)
    held-out-backbone  held-out with the backbone trained on every target, as FedSASRec's is
                   (`--modality-objective holdout-backbone`, not in the seed's design; preset feddmmr_text)
    held-out-backbone-alignment  held-out-backbone + the alignment loss (lambda 0.1)

Two ways to start:
- `--init-from RUN_DIR`: every variant continues from the same FedSASRec checkpoint (the seed's
  recipe: FedDMMR trained on top of a pre-trained ID backbone), validated every 2 rounds, no early
  stop. RUN_DIR: a FedSASRec run on the same data (`feddmmr train --data-dir ... --top-users
  1000`). One run may serve every seed: the leave-one-out split does not depend on the seed, so
  the backbone never saw any seed's validation or test items; the seeds then vary client
  sampling, negatives, dropout and the evaluation candidates of the compared rounds.
- without it, from scratch: every variant trains `--rounds` rounds from a fresh model, with the
  validation schedule and early stopping of `feddmmr train` (patience 5).

    python benchmarks/feddmmr_ablation.py --init-from RUN_DIR --text FEATURES.npz          # seeds 0 1 2
    python benchmarks/feddmmr_ablation.py --init-from RUN_DIR --text F.npz --seeds 0 --rounds 10 --variants fedsasrec feddmmr
    python benchmarks/feddmmr_ablation.py --text F.npz --rounds 50 --variants fedsasrec feddmmr  # from scratch

FEATURES: `feddmmr features text --data-dir ml-1m/ --output FEATURES.npz`. The genre modality
(a second one, so that the router has experts to weigh) is each movie's genre multi-hot vector
from movies.dat (`--movies`; default: beside the data file), written to OUT/genres.npz. "No
memory" leaves the experts nothing to read, which is FedSASRec. Runs go to
OUT/<data>/<variant>/seed<N>/ and resume like benchmarks/quality.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from quality import execute, mean_std, read_run  # noqa: E402

# The training recipe every variant shares, pinned rather than taken from `feddmmr train`'s defaults:
# an earlier table mixed rows run before and after the default server lr changed.
RECIPE = [
    "--local-optimizer",
    "sgd",
    "--learning-rate",
    "1.0",
    "--batch-size",
    "4",
    "--local-epochs",
    "2",
    "--server-optimizer",
    "fedadam",
    "--server-learning-rate",
    "8e-3",
    "--num-negatives",
    "4",
    "--dropout",
    "0.1",
]

# Each variant's flags; TEXT and GENRES stand for the modality specs.
VARIANTS = {
    "fedsasrec": [],
    "feddmmr": ["--model", "feddmmr", "TEXT"],
    "two-modalities": ["--model", "feddmmr", "TEXT", "GENRES"],
    "no-router": ["--model", "feddmmr", "TEXT", "GENRES", "--router", "uniform"],
    "alignment": ["--model", "feddmmr", "TEXT", "--alignment-weight", "0.1"],
    # The seed's novelty threshold (0.583) almost never fires on text features, whose cosines are
    # high (mean 0.44): 0.4 lets about 1 in 5 positives into the long-term memory.
    "novelty-0.4": ["--model", "feddmmr", "TEXT", "--memory-novelty", "0.4"],
    # The score also gets how closely the candidate's feature matches the user's last 5 items (its
    # highest cosine), which the experts' softmax and LayerNorms cannot pass on (docs/notebook/2026-12-06-benchmarks.md).
    "content-match": ["--model", "feddmmr", "TEXT", "--content-history", "5"],
    # The modality side learns from the targets the backbone never trains on: what it adds there is
    # what it adds to a held-out item.
    "held-out": ["--model", "feddmmr", "TEXT", "--content-history", "5", "--modality-objective", "holdout"],
    # As held-out, but the backbone also trains on the held-out targets, so it misses none (the
    # user's most recent training item included).
    "held-out-backbone": [
        "--model",
        "feddmmr",
        "TEXT",
        "--content-history",
        "5",
        "--modality-objective",
        "holdout-backbone",
    ],
    # The seed's drift-adaptive alignment loss (lambda 0.1) on top: the "no alignment" ablation of
    # held-out-backbone, which has none.
    "held-out-backbone-alignment": [
        "--model",
        "feddmmr",
        "TEXT",
        "--content-history",
        "5",
        "--modality-objective",
        "holdout-backbone",
        "--alignment-weight",
        "0.1",
    ],
}


def write_genre_features(movies: Path, output: Path) -> Path:
    """Genre multi-hot rows of the movies in MovieLens-1M's movies.dat (MovieID::Title::G1|G2)."""
    from feddmmr.features.store import save_features
    from feddmmr.features.text import ItemTextError, read_ml1m_movies

    try:
        rows = read_ml1m_movies(movies)
    except ItemTextError as error:
        sys.exit(str(error))
    names = sorted({genre for *_, genres in rows for genre in genres})
    matrix = np.zeros((len(rows), len(names)), dtype=np.float32)
    for row, (*_, genres) in enumerate(rows):
        matrix[row, [names.index(genre) for genre in genres]] = 1.0
    return save_features(output, np.asarray([item_id for _, item_id, _, _ in rows], dtype=np.int64), matrix)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--init-from",
        help="the FedSASRec run (or checkpoint) every variant continues from "
        "(default: every variant trains from scratch)",
    )
    p.add_argument("--text", required=True, help="text features of the items (feddmmr features text)")
    p.add_argument(
        "--movies", help="MovieLens-1M movies.dat for the genre modality (default: beside the data file)"
    )
    p.add_argument(
        "--data", default="ml-1m-top1000", help="ml-1m-top1000 (default), ml-1m, synthetic, or a path"
    )
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--out", default="/tmp/feddmmr-ablation")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--write-docs", nargs="?", const=str(common.DOCS_RESULTS), metavar="FILE")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    common.require_feddmmr()
    data_dir, top_users, label = common.dataset(args.data)
    genres = None
    if any("GENRES" in VARIANTS[v] for v in args.variants):
        movies = Path(args.movies) if args.movies else Path(data_dir or ".").parent / "movies.dat"
        if not movies.exists():
            sys.exit(f"{movies}: no movies.dat for the genre modality; pass --movies PATH")
        genres = write_genre_features(movies, Path(args.out) / "genres.npz")
    specs = {"TEXT": ["--modality", f"text={args.text}"], "GENRES": ["--modality", f"genre={genres}"]}
    failed = 0
    for variant in args.variants:
        for seed in args.seeds:
            run_dir = Path(args.out) / label / variant / f"seed{seed}"
            if (run_dir / "final.json").exists():
                print(f"{variant} seed {seed}: done ({run_dir / 'final.json'})")
                continue
            flags = RECIPE + [part for flag in VARIANTS[variant] for part in specs.get(flag, [flag])]
            setting = {
                "seed": seed,
                "num_rounds": args.rounds,
                "threads": args.threads,
                "run_dir": str(run_dir),
                **(
                    {"init_from": args.init_from, "validate_every": 2, "patience": 0}
                    if args.init_from
                    else {"patience": 5}
                ),
            }
            command = common.train_command(data_dir, top_users, setting, flags)
            if (run_dir / "checkpoints" / "last.pt").exists():
                command = [
                    sys.executable,
                    "-m",
                    "feddmmr",
                    "train",
                    "--resume",
                    str(run_dir),
                    "--threads",
                    str(args.threads),
                ]
            print(f"{variant} seed {seed}: {' '.join(command)}", flush=True)
            failed += not execute(command, run_dir)

    start = f"from {args.init_from}" if args.init_from else "from scratch"
    lines = [
        f"data {label}: test metrics of the best validated round, {args.rounds} rounds {start}",
        "| variant | seeds | test HR@10 | test NDCG@10 | best rounds | train s per round (mean) |",
        "|---|---|---|---|---|---|",
    ]
    for variant in args.variants:
        runs = [r for s in args.seeds if (r := read_run(Path(args.out) / label / variant / f"seed{s}"))]
        if runs:
            per_round = sum(r["train_s"] / r["rounds_run"] for r in runs) / len(runs)
            lines.append(
                f"| {variant} | {len(runs)}/{len(args.seeds)} | {mean_std([r['hr'] for r in runs])} | "
                f"{mean_std([r['ndcg'] for r in runs])} | {', '.join(str(r['best_round']) for r in runs)} | "
                f"{per_round:.1f} |"
            )
    print("\n" + "\n".join(lines))
    if args.write_docs:
        key, title = (
            (f"feddmmr-ablation-{label}", "FedDMMR vs FedSASRec, from a FedSASRec backbone")
            if args.init_from
            else (f"feddmmr-from-scratch-{label}", "FedDMMR vs FedSASRec, from scratch")
        )
        common.write_result(args.write_docs, key, title, lines)
    if failed:
        sys.exit(f"{failed} run(s) failed")


if __name__ == "__main__":
    main()
