"""Adam for parameters with a leading client dimension, one independent optimiser per client.

Same update as `torch.optim.Adam` (L2 weight decay added to the gradient, bias-corrected
moments), computed by PyTorch's fused Adam kernel (the one behind `Adam(fused=True)`) over the
whole [clients, ...] tensors at once: several times faster than element-wise tensor code. The
kernel takes one step count per tensor, so clients are updated in groups that share a step
count; a client whose step is inactive (no targets left, or a non-finite gradient) keeps its
parameters, moments and step count.
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
        self.steps = torch.zeros(first.shape[0], dtype=torch.int64)
        self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}

    def _fused(self, params, grads, exp_avgs, exp_avg_sqs, step: int) -> None:
        steps = [torch.tensor(float(step)) for _ in params]
        torch._fused_adam_(
            params, grads, exp_avgs, exp_avg_sqs, [], steps,
            lr=self.lr, beta1=self.betas[0], beta2=self.betas[1], weight_decay=self.weight_decay,
            eps=self.eps, amsgrad=False, maximize=False,
        )

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor], active: torch.Tensor) -> None:
        active = active.cpu()
        self.steps += active.long()
        names = list(self.params)
        group_steps = torch.unique(self.steps[active])
        if bool(active.all()) and len(group_steps) == 1:
            self._fused([self.params[n] for n in names], [grads[n] for n in names],
                        [self.exp_avg[n] for n in names], [self.exp_avg_sq[n] for n in names], int(group_steps[0]))
            return
        for step in group_steps.tolist():
            index = torch.nonzero(active & (self.steps == step)).flatten().to(grads[names[0]].device)
            params = [self.params[n].index_select(0, index) for n in names]
            exp_avgs = [self.exp_avg[n].index_select(0, index) for n in names]
            exp_avg_sqs = [self.exp_avg_sq[n].index_select(0, index) for n in names]
            self._fused(params, [grads[n].index_select(0, index) for n in names], exp_avgs, exp_avg_sqs, step)
            for n, p, m, v in zip(names, params, exp_avgs, exp_avg_sqs):
                self.params[n].index_copy_(0, index, p)
                self.exp_avg[n].index_copy_(0, index, m)
                self.exp_avg_sq[n].index_copy_(0, index, v)


class BatchedSGD:
    """Plain SGD (L2 weight decay added to the gradient), one per client; inactive clients keep
    their parameters. Same update as `torch.optim.SGD` without momentum."""

    def __init__(self, params: dict[str, torch.Tensor], lr: float, weight_decay: float = 0.0) -> None:
        self.params, self.lr, self.weight_decay = params, lr, weight_decay

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor], active: torch.Tensor) -> None:
        for name, param in self.params.items():
            grad = grads[name]
            if self.weight_decay:
                grad = grad.add(param, alpha=self.weight_decay)
            scale = (active.to(param.dtype) * self.lr).view((-1,) + (1,) * (param.dim() - 1))
            param.sub_(grad * scale)


LOCAL_OPTIMIZERS = {"adam": BatchedAdam, "sgd": BatchedSGD}
# The single-model counterparts (sequential engine, centralised baseline).
TORCH_OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
