"""How much ranking signal an item modality adds to a trained ID model, measured post hoc.

For a finished FedSASRec run, every held-out candidate c gets the model's score s(c) and a content
score: the mean (or max) cosine between c's feature and the features of the user's last k
items. The blend s(c) + a * std(s) / std(content) * content(c) is ranked for a grid of a; a is
chosen on validation and the test is read at that a. No training, no model change: an upper
bound on what a content term of this kind could add to this backbone, and a cheap check of
whether a modality is worth FedDMMR's cost on a dataset.

    python benchmarks/content_signal.py RUN_DIR [RUN_DIR ...] --features text=FEATURES.npz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

WEIGHTS = (0.05, 0.1, 0.2, 0.4, 0.8)
HISTORY = (5, 20, 50)


def content_scores(
    features: torch.Tensor, inputs: torch.Tensor, candidates: torch.Tensor, k: int
) -> dict[str, torch.Tensor]:
    """Mean and max cosine [users, n] between each candidate and the user's last k items (features unit-norm)."""
    history = inputs[:, -k:]
    real = history > 0
    cosines = torch.einsum("und,ukd->unk", features[candidates], features[history])  # [users, n, k]
    mean = (cosines * real[:, None]).sum(-1) / real.sum(-1, keepdim=True).clamp(min=1)
    largest = cosines.masked_fill(~real[:, None], -1.0).max(-1).values
    return {f"mean of last {k}": mean, f"max of last {k}": largest}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("runs", nargs="+", type=Path, help="finished FedSASRec runs (local engine)")
    p.add_argument("--features", required=True, help="NAME=FILE, as for feddmmr train --modality")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    common.require_feddmmr()
    from feddmmr.best_model import load_best_model
    from feddmmr.evaluation import metrics_from_ranks, ranks_of_first
    from feddmmr.features.store import load_modality

    torch.set_num_threads(args.threads)
    print(common.machine_line())

    def metrics(scores: torch.Tensor) -> dict[str, float]:
        return metrics_from_ranks(ranks_of_first(scores).numpy())

    for run_dir in args.runs:
        best = load_best_model(run_dir)
        if best.config.model != "fedsasrec":
            sys.exit(
                f"{run_dir}: model {best.config.model!r}; this measures what content adds to an ID-only model"
            )
        features = torch.from_numpy(load_modality(args.features, best.item_ids).matrix)
        model = best.model.eval()
        model_scores, content = {}, {}
        for name, eval_set in (("valid", best.valid_set), ("test", best.test_set)):
            with torch.no_grad():
                model_scores[name] = model.score_last(eval_set.inputs, eval_set.candidates)
            content[name] = {
                key: value
                for k in HISTORY
                for key, value in content_scores(features, eval_set.inputs, eval_set.candidates, k).items()
            }
        base = {name: metrics(model_scores[name]) for name in model_scores}
        print(
            f"{run_dir}: best round {best.round}; the model alone: valid HR@10 {base['valid']['HR@10']:.3f}, "
            f"test HR@10 {base['test']['HR@10']:.3f} NDCG@10 {base['test']['NDCG@10']:.4f}"
        )
        for key in content["valid"]:
            alone = metrics(content["valid"][key])["HR@10"]

            def blend(name: str, a: float) -> torch.Tensor:
                extra = content[name][key]
                return model_scores[name] + a * model_scores[name].std() / extra.std() * extra

            valid = {a: metrics(blend("valid", a))["HR@10"] for a in WEIGHTS}
            chosen = max(WEIGHTS, key=lambda a: (valid[a], -a))
            test = metrics(blend("test", chosen))
            grid = " ".join(f"{a:g}:{v:.3f}" for a, v in valid.items())
            print(
                f"  {key:>15}: alone valid HR@10 {alone:.3f} | blend valid HR@10 by a {grid} | a {chosen:g}: "
                f"test HR@10 {test['HR@10']:.3f} ({test['HR@10'] - base['test']['HR@10']:+.3f}) "
                f"NDCG@10 {test['NDCG@10']:.4f} ({test['NDCG@10'] - base['test']['NDCG@10']:+.4f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
