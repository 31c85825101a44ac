"""Split a dataset into one data file per SuperNode, for a deployment (or a rehearsal of one).

    python -m feddmmr.flower.partition --nodes 3 --out nodes/ [--data-dir ...] [--format ...]
        [--top-users N] [--min-length N]

writes nodes/node-<k>/interactions.csv (user,item,time; original ids, time = position in the
user's sequence) with the same users as the simulation's partition k (node_data.partition_users).
Each SuperNode then reads only its own file: `--node-config "data-dir=nodes/node-<k>/interactions.csv"`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from feddmmr.data.load import load_sequences
from feddmmr.data.types import SequenceData
from feddmmr.flower.node_data import partition_users, select_users

NODE_FILE = "interactions.csv"


def write_node_files(data: SequenceData, num_nodes: int, out: Path) -> list[Path]:
    paths = []
    for node in range(num_nodes):
        part = select_users(data, partition_users(data.num_users, node, num_nodes))
        lengths = part.lengths
        table = pd.DataFrame(
            {
                "user": np.repeat(part.user_ids, lengths),
                "item": part.item_ids[part.items],
                "time": np.concatenate([np.arange(n) for n in lengths])
                if len(lengths)
                else np.zeros(0, np.int64),
            }
        )
        path = out / f"node-{node}" / NODE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(path, index=False)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, required=True, help="number of SuperNodes")
    parser.add_argument("--out", type=Path, required=True, help="folder to write node-<k>/ folders into")
    parser.add_argument("--data-dir", help="the dataset, as for feddmmr train (default: the synthetic one)")
    parser.add_argument("--format")
    parser.add_argument("--top-users", type=int)
    parser.add_argument("--min-length", type=int, default=3)
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error(f"--nodes must be >= 1, got {args.nodes}")
    data = load_sequences(
        args.data_dir, format=args.format, top_users=args.top_users, min_length=args.min_length
    )
    for path in write_node_files(data, args.nodes, args.out):
        print(path)


if __name__ == "__main__":
    main()
