"""Does the order of equal timestamps move ML-1M's full-ranking yardstick?

MovieLens users rate many movies in the same second, so which of them is a user's last (test) and
second last (validation) item is the order a preprocessed file happens to hold. This script writes
the same users twice: in the order of a sequences file (`ml-1m_sequences.txt`: ties in arbitrary
order) and ordered by (timestamp, movie id), a deterministic order a model can learn; it prints how
many held-out items differ, and with `--train` trains `--config sasrec_plus` (or the flags after
`--`) on both and prints their test figures side by side.

    python benchmarks/tie_order.py --out /tmp/ties                  # the two files and the counts
    python benchmarks/tie_order.py --out /tmp/ties --train --threads 1

Defaults read ../shared/data/ml-1m: the official ratings of users 1-2,999 (the only ones with
timestamps there) and the sequences file. The files hold MovieLens data: keep them out of the
repository.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SHARED = common.ROOT.parent / "shared" / "data" / "ml-1m"
ORDERS = ("shared_order", "time_then_id")


def read_ratings(path: Path) -> dict[int, list[tuple[int, int]]]:
    """user -> [(timestamp, movie)] from an official `UserID::MovieID::Rating::Timestamp` file."""
    opener = gzip.open if path.suffix == ".gz" else open
    by_user: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)
    with opener(path, "rt", encoding="latin-1") as handle:
        for line in handle:
            user, movie, _, timestamp = line.strip().split("::")
            by_user[int(user)].append((int(timestamp), int(movie)))
    return by_user


def write_orders(ratings: Path, sequences: Path, out: Path) -> dict[str, int]:
    """Write out/shared_order.txt and out/time_then_id.txt; return how many held-out items differ."""
    by_user = read_ratings(ratings)
    shared = {}
    for line in sequences.read_text().splitlines():
        fields = line.split()
        if int(fields[0]) in by_user:
            shared[int(fields[0])] = [int(item) for item in fields[1:]]
    missing = sorted(set(by_user) - set(shared))
    if missing:
        sys.exit(f"{sequences}: no sequence for users {missing[:5]} of {ratings}")
    out.mkdir(parents=True, exist_ok=True)
    differ = {"users": len(by_user), "test": 0, "validation": 0}
    with open(out / "shared_order.txt", "w") as a, open(out / "time_then_id.txt", "w") as b:
        for user in sorted(by_user):
            ordered = [movie for _, movie in sorted(by_user[user])]
            if sorted(ordered) != sorted(shared[user]):
                sys.exit(f"user {user}: the two files hold different items")
            differ["test"] += ordered[-1] != shared[user][-1]
            differ["validation"] += ordered[-2] != shared[user][-2]
            a.write(f"{user} {' '.join(map(str, shared[user]))}\n")
            b.write(f"{user} {' '.join(map(str, ordered))}\n")
    return differ


def main(argv: list[str] | None = None) -> None:
    own, passthrough = common.split_passthrough(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ratings", type=Path, default=SHARED / "ratings_users1-2999.dat.gz")
    p.add_argument("--sequences", type=Path, default=SHARED / "ml-1m_sequences.txt")
    p.add_argument("--out", type=Path, required=True, help="a folder for the two files (and the runs)")
    p.add_argument("--train", action="store_true", help="train on both orders and compare their tests")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(own)
    for path in (args.ratings, args.sequences):
        if not path.exists():
            common.skip(f"{path} is absent (pass --ratings / --sequences)")
    differ = write_orders(args.ratings, args.sequences, args.out)
    print(
        f"{differ['users']} users: ordering ties by movie id changes the test item of {differ['test']} "
        f"and the validation item of {differ['validation']}"
    )
    if not args.train:
        return
    flags = passthrough or ["--config", "sasrec_plus"]
    for order in ORDERS:
        run_dir = args.out / f"run_{order}"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "feddmmr",
                "train",
                *flags,
                "--data-dir",
                str(args.out / f"{order}.txt"),
                "--format",
                "sequences",
                "--threads",
                str(args.threads),
                "--seed",
                str(args.seed),
                "--run-dir",
                str(run_dir),
            ],
            check=True,
        )
    print("order          best epoch  test HR@10  NDCG@10 (full ranking)")
    for order in ORDERS:
        final = json.loads((args.out / f"run_{order}" / "final.json").read_text())
        full = final["test"] if final["eval"] == "full" else final["test_full"]
        print(f"{order:<14} {final['best_round']:>10}  {full['HR@10']:.4f}      {full['NDCG@10']:.4f}")


if __name__ == "__main__":
    main()
