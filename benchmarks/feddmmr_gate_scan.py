"""What FedDMMR's experts add to a trained model: its metrics with the gate g scaled.

Scores are <h + g * sum_m w_m LN(o_m), E[c]>: g = 0 leaves the backbone (SASRec's score), g x 1
is the trained model, larger factors lean on the experts more. A branch that carries ranking
signal gains from g x 1 over g = 0; one that merely adds noise loses with every factor.

    python benchmarks/feddmmr_gate_scan.py RUN_DIR [RUN_DIR ...] [--factors 0 1 2 4 8]

RUN_DIR: a finished `feddmmr train --model feddmmr` run on the local engine (its best checkpoint,
memories and saved candidates are read; nothing is trained).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--factors", type=float, nargs="+", default=[0, 1, 2, 4, 8])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    common.require_feddmmr()
    from feddmmr.train import load_best_model

    torch.set_num_threads(args.threads)
    print(common.machine_line())
    for run_dir in args.runs:
        best = load_best_model(run_dir)
        if not getattr(best.model, "mixes", False):
            sys.exit(f"{run_dir}: not a FedDMMR run with a modality (its model has no experts to scale)")
        gate = best.model.gate.detach().clone()
        print(f"{run_dir}: best round {best.round}, g = {gate.item():.4f}")
        for factor in args.factors:
            best.model.gate.data = gate * factor
            valid, test = best.evaluate(best.valid_set), best.evaluate(best.test_set)
            print(f"  g x {factor:g}: valid HR@10 {valid['HR@10']:.3f} NDCG@10 {valid['NDCG@10']:.4f} | "
                  f"test HR@10 {test['HR@10']:.3f} NDCG@10 {test['NDCG@10']:.4f}", flush=True)
        best.model.gate.data = gate


if __name__ == "__main__":
    main()
