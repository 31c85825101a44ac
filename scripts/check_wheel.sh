#!/usr/bin/env bash
# Build feddmmr's wheel, install it into a fresh virtualenv outside the checkout, and use it there:
# a named preset, the Flower simulation and app, a comparison report of two runs, TensorBoard and
# MLflow, recommendations from the command line and Python, an export, a study over three seeds.
# Prints "wheel check passed" at the end. Usage: bash scripts/check_wheel.sh [WORK_DIR]
set -euo pipefail
checkout="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
PYTHON=${PYTHON:-python3}
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 HF_HUB_OFFLINE=1

"$PYTHON" -m pip wheel -q --no-deps -w "$work/dist" "$checkout"
"$PYTHON" -m venv "$work/venv"
. "$work/venv/bin/activate"
python -m pip install -q "torch==2.13.0"
python -m pip install -q "$(ls "$work"/dist/feddmmr-*.whl)[flower,tensorboard,mlflow]"

cd "$work"  # nothing of the checkout is on the path from here on
python -c "import feddmmr, sys; assert '$checkout' not in feddmmr.__file__, feddmmr.__file__"
feddmmr --version
feddmmr configs > configs.txt && grep -q "^fedsasrec " configs.txt
small=(--num-rounds 2 --top-users 60 --max-seq-len 10 --hidden-dim 16 --num-heads 2 --num-blocks 1)
feddmmr train --config fedsasrec "${small[@]}" --run-dir runs/preset --tracker tensorboard --tracker mlflow
feddmmr train "${small[@]}" --run-dir runs/other --learning-rate 0.3
feddmmr train --engine flower "${small[@]}" --run-dir runs/flower
feddmmr report runs/preset runs/other --output report | tee report.txt
test -s report/comparison.png
test -d runs/preset/tensorboard && test -s runs/mlflow.db && test -s runs/flower/final.json
feddmmr flower app app
flwr build --app app
ls ./*.fab

# Use what was trained: the command line's and Python's recommendations are the same 10 items, none
# in the user's history; the exported program ranks them first too.
user=$(python -c "import feddmmr; print(feddmmr.load('runs/preset').split.data.user_ids[0])")
feddmmr recommend runs/preset --user "$user" --k 10 --json > recommended.json
feddmmr export runs/preset --output served
python - "$user" <<'PY'
import json, sys

import torch

import feddmmr

user = sys.argv[1]
best = feddmmr.load("runs/preset")
row = [str(u) for u in best.split.data.user_ids].index(user)
history = best.split.data.sequence(row)
cli = [entry["item"] for entry in json.load(open("recommended.json"))[user]]
python = [rec.item for rec in best.recommend([best.split.data.user_ids[row]], k=10)[0]]
assert len(cli) == 10 and [str(i) for i in cli] == [str(i) for i in python], (cli, python)
seen = {str(best.item_ids[i]) for i in history}
assert not seen & {str(i) for i in cli}, "a recommended item is in the user's history"
program = torch.export.load("served/model.pt2").module()
items = json.load(open("served/items.json"))
inputs = torch.zeros(1, items["max_seq_len"], dtype=torch.int64)
tail = torch.from_numpy(history[-items["max_seq_len"]:])
inputs[0, -len(tail):] = tail
scores = program(inputs)[0]
scores[0] = -float("inf")
scores[torch.from_numpy(history)] = -float("inf")
served = [items["item_ids"][i] for i in scores.topk(10).indices.tolist()]
assert [str(i) for i in served] == [str(i) for i in cli], (served, cli)
print("recommend, load and export agree:", cli)
PY

# A study over seeds: three runs that differ only by their seed, summarised as mean ± se.
feddmmr train "${small[@]}" --seeds 0,1,2 --run-dir runs/study
feddmmr report runs/study/seed0 runs/study/seed1 runs/study/seed2 --over-seeds | tee seeds.txt
grep -q "±" seeds.txt
echo "wheel check passed"
