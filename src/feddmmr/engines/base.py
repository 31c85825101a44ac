"""What every engine shares: its working copy of the model, one guarded optimiser step."""

from __future__ import annotations

import copy

import torch

from feddmmr.federated.precision import LossScales


def working_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` whose parameters are its own, so that training it never changes the run's
    model; the buffers (FedDMMR's feature tables, never trained) are shared, not copied."""
    return copy.deepcopy(model, memo={id(buffer): buffer for buffer in model.buffers()})


def guarded_step(
    objective: torch.Tensor, params: list[torch.Tensor], optimizer: torch.optim.Optimizer, scales: LossScales
) -> bool:
    """Backward and optimiser step of one module, never on a non-finite loss or gradient.

    Under fp16 the loss is scaled by the client's scale for the backward pass and the gradients
    unscaled before the step (the GradScaler rule: a non-finite step is skipped and the scale
    halved). Returns whether the step was taken.
    """
    optimizer.zero_grad(set_to_none=True)
    scale = scales.scale
    (objective * scale[0]).backward()
    grads = [p.grad for p in params if p.grad is not None]
    finite = bool(torch.isfinite(objective)) and all(bool(torch.isfinite(g).all()) for g in grads)
    flag = torch.tensor([finite], device=scale.device)
    scales.update(~flag, flag)
    if not finite:
        return False
    if scales.dynamic:
        for g in grads:
            g.div_(scale[0])
    optimizer.step()
    return True
