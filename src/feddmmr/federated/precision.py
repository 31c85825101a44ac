"""Mixed precision (the seed's AMP): which autocast to use, and fp16 loss scaling.

- "fp16" (CUDA only): float16 autocast with dynamic loss scaling; a step whose gradients are not
  finite is skipped and the scale halved (the GradScaler rule).
- "bf16": bfloat16 autocast on CUDA or CPU; no scaling needed.
- "off": float32.
"auto" resolves to fp16 on CUDA and off on CPU.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

AMP_MODES = ("auto", "off", "fp16", "bf16")


def resolve_amp(mode: str, device: torch.device) -> str:
    if mode not in AMP_MODES:
        raise ValueError(f"unknown amp mode {mode!r}; expected one of {AMP_MODES}")
    if mode == "auto":
        return "fp16" if device.type == "cuda" else "off"
    if mode == "fp16" and device.type != "cuda":
        raise ValueError("amp fp16 needs a CUDA device; on CPU use --amp bf16 or --amp off")
    return mode


@dataclass
class Precision:
    mode: str
    device_type: str
    scale: float = field(default=2.0**16)
    growth_interval: int = 2000
    _good_steps: int = 0

    @property
    def scaling(self) -> bool:
        return self.mode == "fp16"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.mode == "off":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.mode == "fp16" else torch.bfloat16
        return torch.autocast(device_type=self.device_type, dtype=dtype)

    def loss_scale(self) -> float:
        return self.scale if self.scaling else 1.0

    def update(self, found_non_finite: bool) -> None:
        """GradScaler's dynamic rule: halve on overflow, double after a run of good steps."""
        if not self.scaling:
            return
        if found_non_finite:
            self.scale /= 2.0
            self._good_steps = 0
        else:
            self._good_steps += 1
            if self._good_steps >= self.growth_interval:
                self.scale *= 2.0
                self._good_steps = 0
