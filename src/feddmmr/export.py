"""`feddmmr export RUN --output DIR`: a run's best FedSASRec as files a server loads without
feddmmr, with only torch:

- DIR/model.pt2: a `torch.export` program. Input: `sequences` [batch, max_seq_len] int64, each row a
  user's most recent items as dense ids, oldest first, left-padded with 0. Output: scores [batch,
  num_items + 1] of every item as the next one (column 0 is padding; the user's own items are not
  masked). Load with `torch.export.load(path).module()`.
- DIR/items.json: `max_seq_len` and `item_ids`, the dataset's item id of each dense id (index 0:
  padding, null), to turn histories into inputs and scores back into items.

With `--item-tower content` the program holds every item's vector as the run scores it (its ID
embedding, or its stand-in from its features), fixed at export: the feature files are not needed
to serve. FedDMMR is not exported: its scores read each client's memory, which lives with the run.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

import torch

from feddmmr.atomic import atomic_write
from feddmmr.best_model import BestModel, load_best_model
from feddmmr.checkpoint import json_value, write_json
from feddmmr.errors import InputError
from feddmmr.model.sasrec import SASRec


class NextItemScores(torch.nn.Module):
    """Scores of every item after each padded history: what model.pt2 computes."""

    def __init__(self, model: SASRec) -> None:
        super().__init__()
        self.model = model

    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        return self.model.score_all_last(sequences)


def servable(model: SASRec) -> SASRec:
    """A copy of `model` on the CPU in evaluation mode whose item table holds every item's vector as
    the model scores it (a content tower's stand-ins baked in), and no tower."""
    with torch.no_grad():
        table = model.eval().all_item_vectors().detach().float().cpu().clone()
    baked = copy.deepcopy(model).cpu().float().eval()
    baked.item_tower = None
    baked.item_embedding.weight = torch.nn.Parameter(table, requires_grad=False)
    return baked


def export_best_model(best: BestModel, output: Path) -> list[Path]:
    """Write model.pt2 and items.json of `best` into `output`; returns the paths."""
    if best.config.model != "fedsasrec":
        raise InputError(
            f"export covers FedSASRec; a {best.config.model} model's scores read each client's memory, "
            f"which stays with the run (use `feddmmr recommend`)"
        )
    model = servable(best.model)
    length = model.config.max_seq_len
    example = torch.zeros(2, length, dtype=torch.int64)
    example[:, -1] = 1
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    program = torch.export.export(NextItemScores(model), (example,), dynamic_shapes={"sequences": {0: batch}})
    output.mkdir(parents=True, exist_ok=True)
    model_path, items_path = output / "model.pt2", output / "items.json"
    buffer = io.BytesIO()  # serialised in memory, then written atomically (as checkpoints are)
    torch.export.save(program, buffer)
    atomic_write(model_path, lambda handle: handle.write(buffer.getbuffer()))
    write_json(
        items_path, {"max_seq_len": length, "item_ids": [None] + [json_value(i) for i in best.item_ids[1:]]}
    )
    return [model_path, items_path]


def export_run(run_dir: str | Path, output: str | Path) -> list[Path]:
    """The run's best model, exported (module docstring)."""
    return export_best_model(load_best_model(run_dir), Path(output))
