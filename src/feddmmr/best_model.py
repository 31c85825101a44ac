"""A finished run's best model, reloaded from its directory: to evaluate it again (final.json's
test), or with another ranking mode."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from feddmmr import run_directory
from feddmmr.checkpoint import load_checkpoint
from feddmmr.config import TrainConfig
from feddmmr.config_files import saved_config
from feddmmr.data.negatives import load_candidates
from feddmmr.data.split import LeaveOneOut
from feddmmr.errors import InputError
from feddmmr.evaluation import EvalSet, group_metrics, held_out_ranks, make_eval_sets, metrics_from_ranks
from feddmmr.federated.precision import Precision
from feddmmr.memory.two_tier import MemoryState
from feddmmr.model.sasrec import SASRec, SASRecConfig
from feddmmr.run_setup import (
    build_model,
    feature_paths,
    load_run_data,
    load_run_features,
    make_memories,
    resolve_device,
    run_split,
)


class Recommender:
    """What a loaded model offers (`feddmmr.load`): recommendations, scores and item vectors, in
    the data's item ids (`item_ids`: the dataset's id of each dense id; index 0 is padding)."""

    def recommend(self, users=None, *, history=None, k: int = 10, exclude_seen: bool = True):
        """The top `k` items (`recommend.Recommendation`: the dataset's item id and its score) for
        each of `users` (the data's user ids) or for one `history` (the data's item ids), best first;
        see recommend.py."""
        from feddmmr.recommend import recommend

        return recommend(self, users=users, history=history, k=k, exclude_seen=exclude_seen)

    def score(self, users=None, *, history=None) -> torch.Tensor:
        """Every item's score as the next one [inputs, num_items + 1] (column j: the item
        `item_ids[j]`; column 0 is padding) for `users` or one `history`, as `recommend` takes them."""
        from feddmmr.recommend import score

        return score(self, users=users, history=history)

    def item_vectors(self) -> torch.Tensor:
        """Every item's vector [num_items + 1, d] as the backbone scores it (row j: `item_ids[j]`;
        row 0 is padding; with the content tower, untrained items' stand-ins). FedDMMR's scores also
        add its experts' mixture, which depends on the user."""
        with torch.no_grad():
            return self.model.backbone.all_item_vectors().detach().cpu().clone()


@dataclass
class BestModel(Recommender):
    """A finished run's best model, ready to evaluate: its memories' retrieved slots (FedDMMR) and
    the run's validation and test sets on its saved candidates."""

    config: TrainConfig
    round: int
    model: torch.nn.Module
    item_ids: np.ndarray  # the dataset's item ids by dense id (what modality files are aligned to)
    split: LeaveOneOut  # the run's split (its users, their sequences, its new items)
    memory_slots: tuple[torch.Tensor, torch.Tensor] | None  # (items [users, K], mask)
    valid_set: EvalSet
    test_set: EvalSet
    precision: Precision

    def ranks(self, eval_set: EvalSet, mode: str | None = None) -> np.ndarray:
        """[users] 0-based rank of each held-out item, ranking as `mode` says (default: the run's own `eval`)."""
        return held_out_ranks(
            self.model, eval_set, mode or self.config.eval, precision=self.precision, memory=self.memory_slots
        )

    def evaluate(self, eval_set: EvalSet, mode: str | None = None) -> dict[str, float]:
        """Metrics on `eval_set` (`mode` as for `ranks`)."""
        return metrics_from_ranks(self.ranks(eval_set, mode))

    def with_new_items(self, modality: list[str]) -> BestModel:
        """This run's model with new items appended to its catalogue (new_items.py): the items of
        the feature files `modality` (NAME=FILE, one per modality of the run, as `feddmmr features`
        writes them) that the run's data does not hold, in the order of the first file. Their
        dataset ids end `item_ids`; the model needs `--item-tower content`."""
        from feddmmr.features.store import align_features, aligned_rows, load_features, parse_modality_spec
        from feddmmr.model.new_items import with_new_items

        if not modality:
            raise ValueError("new items: give at least one feature file, as NAME=FILE")
        files = [
            (name, path, *load_features(path)) for name, path in map(parse_modality_spec, modality)
        ]  # read once
        ids = files[0][2]
        if ids is None:
            raise ValueError(
                f"{modality[0]}: new items need a file with their ids (.npz or .safetensors with 'ids')"
            )
        known = set(np.asarray(self.item_ids[1:]).astype(str))
        new_ids = ids[[str(i) not in known for i in ids]]
        if not len(new_ids):
            raise ValueError(
                f"{modality[0]}: every item of the file is already in the run's catalogue: no new item"
            )
        extended = np.concatenate([self.item_ids, new_ids])
        new = {
            name: aligned_rows(
                new_ids, align_features(file_ids, matrix, extended, source=str(path), name=name)
            )
            for name, path, file_ids, matrix in files
        }
        names = [parse_modality_spec(spec)[0] for spec in self.config.modality]
        return dataclasses.replace(self, model=with_new_items(self.model, new, names), item_ids=extended)


def load_best_model(run_dir: str | Path) -> BestModel:
    """A finished run's best model (checkpoints/best.pt) with the run's data split, memories and
    evaluation candidates: `feddmmr.load(run_dir)`."""
    run_dir = Path(run_dir)
    config = saved_config(run_dir)
    if config.model == "feddmmr" and config.engine == "flower":
        raise ValueError(
            f"{run_dir}: a FedDMMR run on Flower kept its client memories on the SuperNodes, so its "
            f"test (final.json) was computed there and cannot be recomputed from the checkpoint"
        )
    data = load_run_data(config)
    run_directory.check_data(run_dir, data, feature_paths(config))
    split = run_split(config, data)
    valid_c, test_c = load_candidates(run_dir / "candidates.npz", split, config.num_negatives_eval)
    valid_set, test_set = make_eval_sets(split, config.max_seq_len, valid_c, test_c)
    device = resolve_device(config.device)
    features = load_run_features(config, split.data.item_ids)
    model = build_model(config, split.num_items, device, features, split.train_counts())
    best = load_checkpoint(
        run_dir / "checkpoints" / "best.pt",
        required=("model", "round"),
        fix="the run's best model is lost: train the run again",
    )
    try:
        model.load_state_dict({k: v.to(device) for k, v in best["model"].items()})
    except RuntimeError as error:  # missing or unexpected tensors, or other shapes
        raise InputError(
            f"{run_dir / 'checkpoints' / 'best.pt'}: the saved model does not fit the model this version "
            f"of feddmmr builds from the run's config ({str(error).splitlines()[0]} ...); it was trained by "
            f"another version: reload it with that version, or train the run again"
        ) from error
    memory = make_memories(config, split.num_users, features, device)
    slots = None
    if memory is not None:
        memory.state = MemoryState.from_dict(best["memory"])
        slots = memory.retrieve(memory.state)
    precision = Precision.of(config.amp, device)
    return BestModel(
        config, best["round"], model.eval(), split.data.item_ids, split, slots, valid_set, test_set, precision
    )


def evaluate_run(run_dir: str | Path, mode: str | None = None) -> dict:
    """Re-evaluate a finished run's best model on its saved candidates (reproduces final.json's test),
    or with another ranking `mode` (sampled or full; default: the run's own)."""
    best = load_best_model(run_dir)
    mode = mode or best.config.eval
    ranks = best.ranks(best.test_set, mode)
    result = {
        "best_round": best.round,
        "eval": mode,
        "valid": best.evaluate(best.valid_set, mode),
        "test": metrics_from_ranks(ranks),
    }
    if groups := best.split.user_groups():
        result["test_groups"] = group_metrics(ranks, groups)  # new items: warm- and cold-target users
    return result


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> SASRec:
    """A FedSASRec model from a checkpoint alone (best.pt or last.pt, or a run directory for its
    best.pt), without the data: the checkpoint carries the model's arguments. FedDMMR's model also
    needs its modality feature files: use `load_best_model(run_dir)`."""
    return model_from(load_checkpoint(Path(checkpoint)), checkpoint).to(device)


def model_from(saved: dict, checkpoint: str | Path) -> SASRec:
    """The FedSASRec model a loaded checkpoint holds, in evaluation mode (`checkpoint` names it in errors)."""
    args = saved.get("model_args")
    if args is None:
        raise ValueError(
            f"{checkpoint}: this checkpoint was saved before checkpoints carried the model's arguments; "
            f"load it with load_best_model(RUN_DIR), which rebuilds the model from the run's config and data"
        )
    if any(name.startswith("item_tower.") for name in saved["model"]):
        raise ValueError(
            f"{checkpoint}: this model scores new items from its modality feature files (--item-tower "
            f"content): use load_best_model(RUN_DIR), which reads them"
        )
    if args["model"] != "fedsasrec":
        raise ValueError(
            f"{checkpoint}: a {args['model']} model also needs its modality feature files "
            f"({', '.join(args.get('modalities', []))}): use load_best_model(RUN_DIR)"
        )
    model = SASRec(SASRecConfig(**args["sasrec"]))
    model.load_state_dict(saved["model"])
    return model.eval()


@dataclass
class CheckpointModel(Recommender):
    """A FedSASRec model and its item vocabulary from a checkpoint file alone (no data): it
    recommends for histories of the data's item ids (`recommend(history=[...])`)."""

    model: SASRec
    item_ids: np.ndarray  # the dataset's item id of each dense id (index 0: padding)
    precision: Precision
    split: None = None  # no data: no users to recommend for by id
    memory_slots: None = None


def load(run_or_checkpoint: str | Path) -> BestModel | CheckpointModel:
    """`feddmmr.load`: a run directory gives its best model with the run's data (`BestModel`:
    recommend for its users or for histories, evaluate, add new items); a checkpoint file
    (best.pt or last.pt, FedSASRec) gives the model and its item vocabulary alone (`CheckpointModel`:
    recommend for histories)."""
    path = Path(run_or_checkpoint)
    if path.is_dir():
        return load_best_model(path)
    saved = load_checkpoint(path)
    model = model_from(saved, path)
    if "item_ids" not in saved:
        raise InputError(
            f"{path}: this checkpoint was saved before checkpoints carried the item vocabulary; load its run "
            f"directory instead (feddmmr.load(RUN_DIR)), which reads the ids from the data"
        )
    item_ids = np.array(saved["item_ids"], dtype=object)
    return CheckpointModel(model, item_ids, Precision("off", "cpu"))
