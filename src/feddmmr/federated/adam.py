"""Adam for parameters with a leading client dimension, one independent optimiser per client.

Mirrors `torch.optim.Adam` (L2 weight decay added to the gradient, bias-corrected moments) so
that the vectorised engine reproduces the sequential one. A client whose step is inactive (no
targets left, or a non-finite gradient) keeps its parameters, moments and step count.
"""

from __future__ import annotations

import torch


class BatchedAdam:
    def __init__(
        self,
        params: dict[str, torch.Tensor],
        lr: float,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = params
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        first = next(iter(params.values()))
        self.steps = torch.zeros(first.shape[0], dtype=torch.float64, device=first.device)
        self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor], active: torch.Tensor) -> None:
        beta1, beta2 = self.betas
        all_active = bool(active.all())
        self.steps += active.to(self.steps.dtype)
        steps = self.steps.clamp(min=1)
        step_size = (self.lr / (1 - beta1**steps)).to(torch.float32)
        bias_correction2_sqrt = torch.sqrt(1 - beta2**steps).to(torch.float32)
        for name, param in self.params.items():
            grad = grads[name]
            if self.weight_decay:
                grad = grad.add(param, alpha=self.weight_decay)
            view = (-1,) + (1,) * (param.dim() - 1)
            exp_avg = self.exp_avg[name].lerp(grad, 1 - beta1)
            exp_avg_sq = self.exp_avg_sq[name].mul(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt.view(view)).add_(self.eps)
            update = exp_avg / denom * step_size.view(view)
            if all_active:
                self.exp_avg[name], self.exp_avg_sq[name] = exp_avg, exp_avg_sq
                param.sub_(update)
            else:
                keep = active.view(view)
                self.exp_avg[name] = torch.where(keep, exp_avg, self.exp_avg[name])
                self.exp_avg_sq[name] = torch.where(keep, exp_avg_sq, self.exp_avg_sq[name])
                param.sub_(torch.where(keep, update, torch.zeros_like(update)))
