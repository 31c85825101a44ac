"""Mixed precision (the seed's AMP): which autocast to use, and fp16 loss scaling.

- "fp16" (CUDA only): float16 autocast with dynamic loss scaling, one scaler per client as in the
  seed (its GradScaler was created with the client's model): a client's step whose loss or
  gradients are not finite is skipped and that client's scale halved; the other clients of a
  batched chunk are untouched.
- "bf16": bfloat16 autocast on CUDA or CPU; no scaling needed.
- "off": float32.
"auto" resolves to float32 on every device: on an H200, bf16 gave no speed-up over float32
(rounds are bound by kernel launches and Python work, not arithmetic; docs/notebook/2026-12-06-benchmarks.md), and
float32 is the faithful mode.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

AMP_MODES = ("auto", "off", "fp16", "bf16")


def resolve_amp(mode: str, device: torch.device) -> str:
    if mode not in AMP_MODES:
        raise ValueError(f"unknown amp mode {mode!r}; expected one of {AMP_MODES}")
    if mode == "auto":
        return "off"
    if mode == "fp16" and device.type != "cuda":
        raise ValueError("amp fp16 needs a CUDA device; on CPU use --amp bf16 or --amp off")
    return mode


@dataclass
class LossScales:
    """The fp16 loss scales of a round's clients, [clients] tensors on the training device.

    Each client follows GradScaler's dynamic rule on its own: halve on a non-finite step (which is
    skipped), double after `growth_interval` finite steps in a row. Updated on the device, so the
    step loop never waits for the host.
    """

    scale: torch.Tensor  # [clients] float32
    good_steps: torch.Tensor  # [clients] int64: finite steps since the last change of scale
    growth_interval: int
    dynamic: bool = True  # False without fp16: the scale stays 1

    def update(self, non_finite: torch.Tensor, trained: torch.Tensor) -> None:
        """After a step: `non_finite` clients halve; `trained` ones count a good step."""
        if not self.dynamic:
            return
        good = torch.where(non_finite, 0, self.good_steps + trained.long())
        grow = good >= self.growth_interval
        self.scale = torch.where(non_finite, self.scale / 2, torch.where(grow, self.scale * 2, self.scale))
        self.good_steps = torch.where(grow, 0, good)


@dataclass
class Precision:
    """A run's precision mode and, under fp16, the loss-scale state every client starts a round
    from. After a round the run keeps its most cautious client's state (the lowest scale, the
    fewest good steps), so that the next round's clients rarely lose a step to an overflow."""

    mode: str
    device_type: str
    scale: float = 2.0**16
    growth_interval: int = 2000
    good_steps: int = 0

    @classmethod
    def of(cls, amp: str, device: torch.device) -> Precision:
        """The precision a run's --amp asks for on `device` (`resolve_amp`)."""
        return cls(resolve_amp(amp, device), device.type)

    @property
    def scaling(self) -> bool:
        return self.mode == "fp16"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.mode == "off":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.mode == "fp16" else torch.bfloat16
        return torch.autocast(device_type=self.device_type, dtype=dtype)

    def client_scales(self, clients: int, device: torch.device) -> LossScales:
        """`clients` fresh scalers at the run's state (a static scale of 1 without fp16)."""
        scale = self.scale if self.scaling else 1.0
        return LossScales(
            torch.full((clients,), scale, dtype=torch.float32, device=device),
            torch.full((clients,), self.good_steps, dtype=torch.int64, device=device),
            self.growth_interval,
            dynamic=self.scaling,
        )

    def settle(self, rounds_scales: list[LossScales]) -> None:
        """Keep the most cautious of the round's client states (no change without fp16 or clients)."""
        if not self.scaling or not rounds_scales:
            return
        self.scale = min(float(s.scale.min()) for s in rounds_scales)
        self.good_steps = min(int(s.good_steps.min()) for s in rounds_scales)
