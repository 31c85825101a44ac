"""Cost of one dropout mask under vmap (one client per slice), the project's against the alternatives.

    python benchmarks/dropout_cost.py                 # 16 clients x 4 windows x 50 positions x 128
    python benchmarks/dropout_cost.py --clients 200 --device cuda

Each variant computes the same inverted dropout of a [clients, rows, length, dim] activation under
`vmap(..., randomness="different")`, as the vectorised engine does; a variant the installed torch
cannot run under vmap prints why. Median of `--repeats` calls, measured in turns.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.func import vmap

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from feddmmr.model.sasrec import dropout  # noqa: E402

P = 0.1


def dtype_view(x: torch.Tensor) -> torch.Tensor:
    """Bytes of random 64-bit words viewed as uint8 (needs vmap's view.dtype rule: torch >= 2.13)."""
    threshold, count = round(P * 256), x.numel()
    words = torch.randint(-(2**63), 2**63 - 1, ((count + 7) // 8,), dtype=torch.int64, device=x.device)
    return x * (words.view(torch.uint8)[:count].view(x.shape) >= threshold) * (256.0 / (256 - threshold))


VARIANTS = {
    "feddmmr dropout (64-bit words, shifts)": lambda x: dropout(x, P, True),
    "64-bit words viewed as uint8": dtype_view,
    "rand_like >= p": lambda x: x * (torch.rand_like(x) >= P) / (1 - P),
    "torch.nn.functional.dropout": lambda x: torch.nn.functional.dropout(x, P, True),
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--shape", type=int, nargs=3, default=[4, 50, 128], help="rows length dim of one client")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x = torch.randn(args.clients, *args.shape, device=device)
    runnable = {}
    for name, fn in VARIANTS.items():
        batched = vmap(fn, randomness="different")
        try:
            batched(x)
            runnable[name] = batched
        except RuntimeError as error:
            print(f"{name:40s} cannot run under vmap here: {str(error).splitlines()[0]}")

    def call(fn):
        fn(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = {name: [] for name in runnable}
    for _ in range(args.repeats):
        for name, fn in runnable.items():
            times[name] += common.repeat(lambda: call(fn), 1)
    print(common.machine_line())
    ours = common.median(times[next(iter(VARIANTS))])
    for name, values in times.items():
        print(
            f"{name:40s} {common.median(values) * 1e3:7.2f} ms  ({common.ratio(common.median(values), ours)} of ours)"
        )


if __name__ == "__main__":
    main()
