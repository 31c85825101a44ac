"""What FedDMMR's experts add to a trained model: its metrics with the gate g scaled.

Scores are <h + g * sum_m w_m LN(o_m), E[c]>: g = 0 leaves the backbone (SASRec's score), g x 1
is the trained model, larger factors lean on the experts more. A branch that carries ranking
signal gains from g x 1 over g = 0; one that merely adds noise loses with every factor. With
`--content-history`, `--match-factors` scales the content-match weights mu the same way (every
pair of factors is scored; g x 0 with mu x 0 is the backbone alone).

    python benchmarks/feddmmr_gate_scan.py RUN_DIR [RUN_DIR ...] [--factors 0 1 2 4 8]
    python benchmarks/feddmmr_gate_scan.py RUN_DIR --factors 0 1 --match-factors 0 0.5 1 1.5

RUN_DIR: a finished `feddmmr train --model feddmmr` run on the local engine (its best checkpoint,
memories and saved candidates are read; nothing is trained).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--factors", type=float, nargs="+", default=[0, 1, 2, 4, 8])
    p.add_argument(
        "--match-factors",
        type=float,
        nargs="+",
        default=[1],
        help="factors of the content-match weights mu (runs trained with --content-history)",
    )
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    common.require_feddmmr()
    from feddmmr.best_model import load_best_model

    torch.set_num_threads(args.threads)
    print(common.machine_line())
    for run_dir in args.runs:
        best = load_best_model(run_dir)
        if not getattr(best.model, "mixes", False):
            sys.exit(f"{run_dir}: not a FedDMMR run with a modality (its model has no experts to scale)")
        model = best.model
        scaled = {"g": model.gate}
        if hasattr(model, "match_weights"):
            scaled["mu"] = model.match_weights
        elif args.match_factors != [1]:
            sys.exit(
                f"{run_dir}: trained without --content-history, it has no content-match weights to scale"
            )
        trained = {name: param.detach().clone() for name, param in scaled.items()}
        print(
            f"{run_dir}: best round {best.round}, "
            + ", ".join(
                f"{name} = {', '.join(f'{v:.4f}' for v in value.reshape(-1).tolist())}"
                for name, value in trained.items()
            )
        )
        # The model is scaled in place and dropped with `best` after its run: nothing to restore.
        for factor, match_factor in itertools.product(args.factors, args.match_factors):
            factors = {"g": factor, "mu": match_factor}
            for name, param in scaled.items():
                param.data = trained[name] * factors[name]
            valid, test = best.evaluate(best.valid_set), best.evaluate(best.test_set)
            label = " ".join(f"{name} x {factors[name]:g}" for name in scaled)
            print(
                f"  {label}: valid HR@10 {valid['HR@10']:.3f} NDCG@10 {valid['NDCG@10']:.4f} | "
                f"test HR@10 {test['HR@10']:.3f} NDCG@10 {test['NDCG@10']:.4f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
