"""Adam and SGD for parameters with a leading client dimension, one independent optimiser per client.

Each step takes a device mask of the clients that step: a client whose step is inactive (no
targets left, or a non-finite loss or gradient) keeps its parameters and, for Adam, its moments
and step count. The mask zeroes the inactive clients' gradients (in place: `step` owns the
gradients it is given) and never multiplies by zero: a skipped client's gradient may be inf or
NaN, and NaN * 0 is NaN. All state lives on the parameters' device, and off the CPU no step reads
a value back to the host, so a CUDA step loop never waits.
"""

from __future__ import annotations

import torch


def per_client(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A [clients] tensor shaped to broadcast against a [clients, ...] tensor."""
    return values.view((-1,) + (1,) * (like.dim() - 1))


def masked_gradient(
    grad: torch.Tensor, param: torch.Tensor, active: torch.Tensor, weight_decay: float
) -> torch.Tensor:
    """The step's gradient (plus L2 weight decay), zero for inactive clients whatever it held."""
    if weight_decay:
        grad = grad.add(param, alpha=weight_decay)
    return grad.masked_fill_(~per_client(active, grad), 0.0)


# torch's fused Adam kernel runs on the CPU from torch 2.4.
FUSED_ON_CPU = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4)


class BatchedAdam:
    """The update of `torch.optim.Adam` (L2 weight decay added to the gradient, bias-corrected
    moments), with each client's own step count in the bias corrections.

    On the CPU (torch >= 2.4) the update runs in torch's fused Adam kernel, one call per group of
    clients at the same step count: it reads the groups on the host, which costs nothing there,
    and is one pass over the weights instead of about ten.
    Elsewhere it is element-wise tensor code with per-client step counts and no host read.
    """

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
        self.steps = torch.zeros(first.shape[0], dtype=torch.int64, device=first.device)
        self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}
        self.fused = first.device.type == "cpu" and FUSED_ON_CPU

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor], active: torch.Tensor) -> None:
        self.steps += active.long()
        if self.fused:  # the kernel reads only the stepping clients' gradients
            self._fused_step(grads, active)
        else:
            self._elementwise_step(
                {n: masked_gradient(grads[n], p, active, self.weight_decay) for n, p in self.params.items()},
                active,
            )

    def _fused_step(self, grads: dict[str, torch.Tensor], active: torch.Tensor) -> None:
        # The kernel reads its tensors' memory in order, whatever their strides: a gradient that
        # vmap lays out client-minor (the item table's, with ce-full) must be made contiguous.
        grads = {n: g.contiguous() for n, g in grads.items()}
        names = list(self.params)
        for step in torch.unique(self.steps[active]).tolist():
            group = active & (self.steps == step)
            whole = bool(group.all())
            index = None if whole else torch.nonzero(group).flatten()

            def take(tensors: dict[str, torch.Tensor]) -> list[torch.Tensor]:
                return [tensors[n] if whole else tensors[n].index_select(0, index) for n in names]

            params, exp_avgs, exp_avg_sqs = take(self.params), take(self.exp_avg), take(self.exp_avg_sq)
            torch._fused_adam_(
                params,
                take(grads),
                exp_avgs,
                exp_avg_sqs,
                [],
                [torch.tensor(float(step)) for _ in names],
                lr=self.lr,
                beta1=self.betas[0],
                beta2=self.betas[1],
                weight_decay=self.weight_decay,
                eps=self.eps,
                amsgrad=False,
                maximize=False,
            )
            if not whole:  # index_select copied the group's rows: write them back
                for n, p, m, v in zip(names, params, exp_avgs, exp_avg_sqs):
                    self.params[n].index_copy_(0, index, p)
                    self.exp_avg[n].index_copy_(0, index, m)
                    self.exp_avg_sq[n].index_copy_(0, index, v)

    def _elementwise_step(self, grads: dict[str, torch.Tensor], active: torch.Tensor) -> None:
        beta1, beta2 = self.betas
        steps = self.steps.clamp(min=1).double()
        # Per client: the step size lr / (1 - beta1^t) (0 for a client that does not step) and
        # sqrt(1 - beta2^t), as torch.optim.Adam computes them.
        step_size = torch.where(active, self.lr / (1 - beta1**steps), 0.0).float()
        bias2_sqrt = (1 - beta2**steps).sqrt().float()
        keep1 = torch.where(active, beta1, 1.0).float()  # the moments' decay; 1 keeps them
        keep2 = torch.where(active, beta2, 1.0).float()
        for name, param in self.params.items():
            grad = grads[name]
            exp_avg, exp_avg_sq = self.exp_avg[name], self.exp_avg_sq[name]
            exp_avg.mul_(per_client(keep1, param)).add_(grad, alpha=1 - beta1)
            exp_avg_sq.mul_(per_client(keep2, param)).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / per_client(bias2_sqrt, param)).add_(self.eps)
            param.addcdiv_(exp_avg * per_client(step_size, param), denom, value=-1.0)


class BatchedSGD:
    """Plain SGD (L2 weight decay added to the gradient), one per client. Same update as
    `torch.optim.SGD` without momentum."""

    def __init__(self, params: dict[str, torch.Tensor], lr: float, weight_decay: float = 0.0) -> None:
        self.params, self.lr, self.weight_decay = params, lr, weight_decay

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor], active: torch.Tensor) -> None:
        for name, param in self.params.items():
            param.sub_(masked_gradient(grads[name], param, active, self.weight_decay), alpha=self.lr)


LOCAL_OPTIMIZERS = {"adam": BatchedAdam, "sgd": BatchedSGD}
# The single-model counterparts (sequential engine, centralised baseline).
TORCH_OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
