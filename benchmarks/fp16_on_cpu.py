"""The fp16 path (the seed's AMP) run on the CPU: float16 autocast and loss scaling as on CUDA.

    python benchmarks/fp16_on_cpu.py                    # ML-1M top-1000, 10 rounds, fp16 then float32
    python benchmarks/fp16_on_cpu.py --amp fp16 --rounds 5 --threads 1

`--amp fp16` is refused on the CPU in `feddmmr train` (it is slow there and meant for CUDA); this
script builds the same run with the CPU's float16 autocast, which rounds and overflows as CUDA's
does, to check the fp16 arithmetic and loss scaling without a GPU. Each round prints its loss,
skipped steps, dropped clients, the run's loss scale and whether every global weight is finite;
validation HR@10 at rounds 5 and 10 closes each run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import feddmmr.federated.precision as precision  # noqa: E402
from feddmmr.callbacks import Callback  # noqa: E402
from feddmmr.config import TrainConfig  # noqa: E402
from feddmmr.train import train  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default="ml-1m-top1000")
    p.add_argument("--amp", nargs="+", default=["fp16", "off"], choices=("fp16", "bf16", "off"))
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    data_dir, top_users, label = common.dataset(args.data)
    torch.set_num_threads(args.threads)
    precision.resolve_amp = lambda mode, device: mode  # allow fp16 on the CPU, for this script only
    print(common.machine_line())
    for amp in args.amp:

        class PrintRound(Callback):
            def on_round_end(self, run, record) -> None:
                finite = all(bool(torch.isfinite(p).all()) for p in run.model.parameters())
                print(
                    f"  {amp} round {record['round']}: loss {record['train_loss']:.4f} | skipped steps "
                    f"{record['skipped_steps']} | dropped clients {record['dropped_clients']} | loss scale "
                    f"{run.training.precision.scale:g} | global weights finite: {finite} | "
                    f"{record['train_seconds']:.1f} s",
                    flush=True,
                )

        with tempfile.TemporaryDirectory() as tmp:
            result = train(
                TrainConfig(
                    data_dir=data_dir,
                    top_users=top_users,
                    amp=amp,
                    run_dir=tmp,
                    num_rounds=args.rounds,
                    validate_every=5,
                    patience=0,
                ),
                callbacks=[PrintRound()],
            )
        validated = {r["round"]: r["val"]["HR@10"] for r in result.history if r.get("val")}
        print(
            f"{label} {amp}: validation HR@10 "
            + ", ".join(f"round {k} {v:.3f}" for k, v in validated.items())
        )


if __name__ == "__main__":
    main()
