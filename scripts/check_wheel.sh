#!/usr/bin/env bash
# Build feddmmr's wheel, install it into a fresh virtualenv outside the checkout, and use it there:
# a named preset, the Flower simulation and app, a comparison report of two runs, TensorBoard and
# MLflow. Prints "wheel check passed" at the end. Usage: bash scripts/check_wheel.sh [WORK_DIR]
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
echo "wheel check passed"
