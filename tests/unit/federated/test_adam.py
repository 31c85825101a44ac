"""federated/adam.py: one optimiser per client, as torch's would step each."""

import pytest
import torch

from feddmmr.federated.adam import BatchedAdam, BatchedSGD


@pytest.mark.parametrize(
    "batched, reference_class, fused",
    [
        (BatchedAdam, torch.optim.Adam, True),  # the CPU's fused kernel
        (BatchedAdam, torch.optim.Adam, False),  # element-wise, as on CUDA
        (BatchedSGD, torch.optim.SGD, None),
    ],
)
@pytest.mark.parametrize("client_minor", [False, True])
def test_batched_optimiser_matches_torch_per_client(batched, reference_class, fused, client_minor):
    """Each client's slice follows the torch optimiser through the steps it is active in; an
    inactive client's gradient may be non-finite (a skipped fp16 step) and must not leak in.
    `client_minor`: gradients laid out [5, 3] in memory, as vmap gives the item table's under
    ce-full (the fused kernel once read such a gradient's memory in the wrong order)."""
    torch.manual_seed(1)
    start = torch.randn(3, 5)
    grads = [torch.randn(5, 3).t() if client_minor else torch.randn(3, 5) for _ in range(4)]
    active = [
        torch.tensor([True, True, True]),
        torch.tensor([True, False, True]),
        torch.tensor([False, False, True]),
        torch.tensor([True, True, True]),
    ]
    for g, a in zip(grads, active):
        g[~a] = float("nan")
    params = {"w": start.clone()}
    optimiser = batched(params, lr=0.1, weight_decay=0.01)
    if fused is not None:
        if fused and not optimiser.fused:
            pytest.skip("torch's fused Adam runs on the CPU from torch 2.4")
        optimiser.fused = fused
    for g, a in zip(grads, active):
        optimiser.step({"w": g}, a)
    for client in range(3):
        w = torch.nn.Parameter(start[client].clone())
        reference = reference_class([w], lr=0.1, weight_decay=0.01)
        for g, a in zip(grads, active):
            if a[client]:
                w.grad = g[client].clone()
                reference.step()
        torch.testing.assert_close(params["w"][client], w.detach())
