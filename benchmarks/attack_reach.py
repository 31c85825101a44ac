"""How far must the target rows move for item promotion to reach users? On a trained run's best
model, each target's embedding row is moved by DELTA per coordinate along the sign of the mean user
representation (what a server Adam step of lr DELTA does when the round's mean change of the row
points that way), and ER@10 is measured after each move.

    python benchmarks/attack_reach.py RUN_DIR                   # a FedSASRec run on any data
    python benchmarks/attack_reach.py RUN_DIR --deltas 0 0.04 0.08

The targets are the ones `--attack` would pick with the run's seed (the coldest fifth). Two
directions: the attacker's estimate (the mean representation after its made-up sequences of popular
items, as model poisoning computes it) and the genuine users' own mean (test inputs), an upper bound.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script from anywhere
import common  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from feddmmr.best_model import load_best_model  # noqa: E402
from feddmmr.data.load import load_sequences  # noqa: E402
from feddmmr.data.split import leave_one_out  # noqa: E402
from feddmmr.federated.attacks import Attack, exposure_rate  # noqa: E402
from feddmmr.model.sasrec import ITEM_TABLE  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run_dir")
    p.add_argument("--targets", type=int, default=5)
    p.add_argument("--deltas", type=float, nargs="+", default=[0.0, 0.04, 0.08, 0.16, 0.24])
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


@torch.no_grad()
def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(common.machine_line())
    best = load_best_model(args.run_dir)
    c = best.config
    split = leave_one_out(
        load_sequences(c.data_dir, format=c.format, top_users=c.top_users, min_length=c.min_length)
    )
    attack = Attack.plan("model-poisoning", 0.01, args.targets, split, c.max_seq_len, c.seed)
    model = best.model.eval()
    table = dict(model.named_parameters())[ITEM_TABLE]
    fake_inputs = torch.as_tensor(
        np.stack([attack.sequences[int(u)][:-1] for u in attack.fake_users]), device=table.device
    )
    directions = {
        "attacker's estimate": model.encode(fake_inputs)[:, -1].mean(0).sign(),
        "users' own mean": model.encode(best.test_set.inputs.to(table.device))[:, -1].mean(0).sign(),
    }
    print(
        f"run {args.run_dir} (best round {best.round}), targets {attack.targets.tolist()} (dense ids); "
        f"item-table coordinates' std {float(table[1:].std()):.4f}"
    )
    print(f"{'delta per coordinate':>20}  " + "  ".join(f"{name:>20}" for name in directions))
    original = table.detach().clone()
    rows = torch.as_tensor(attack.targets, device=table.device)
    try:
        for delta in args.deltas:
            exposures = []
            for direction in directions.values():
                table.copy_(original)
                table[rows] += delta * direction
                exposures.append(exposure_rate(model, best.test_set, attack.targets))
            print(f"{delta:>20.3f}  " + "  ".join(f"{e:>20.3f}" for e in exposures), flush=True)
    finally:
        table.copy_(original)


if __name__ == "__main__":
    main()
