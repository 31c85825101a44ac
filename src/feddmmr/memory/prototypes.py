"""Prototypes: each client's summary of its long-term memory, and the server's global clustering.

Both are spherical k-means (cosine similarity on unit vectors; a centroid is the normalised sum
of its members). A centroid that loses all its members keeps its previous position, so results
stay deterministic and no cluster is reseeded at random.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from feddmmr.memory.two_tier import MemoryConfig, MemoryState, utility


def client_prototypes(state: MemoryState, k: int = 5, iterations: int = 10,
                      config: MemoryConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """k prototypes per client from its LT embeddings: (protos [C, k, D], mask [C, k]).

    Centroids start at the k top-utility LT entries (ties: lower slot first; `config` supplies
    age_scale, default MemoryConfig()). A client with n < k usable entries gets those n entries
    as prototypes and k - n masked (zero) ones; entries with zero embeddings (memory without
    features) are not usable, so such clients get all prototypes masked.
    """
    if k < 1 or iterations < 0:
        raise ValueError(f"client_prototypes needs k >= 1 and iterations >= 0, got {k}, {iterations}")
    if k > state.long_capacity:
        raise ValueError(f"k={k} prototypes exceed the LT capacity {state.long_capacity}")
    config = config or MemoryConfig()
    points = state.long_embeddings
    usable = (state.long_items != 0) & (points.abs().sum(-1) > 0)
    ranked = torch.sort(utility(state, config).masked_fill(~usable, -torch.inf),
                        dim=1, descending=True, stable=True).indices[:, :k]
    centroids = points.gather(1, ranked.unsqueeze(2).expand(-1, -1, points.shape[2]))
    mask = usable.gather(1, ranked)
    for _ in range(iterations):
        centroids = _lloyd_step(points, usable.to(points.dtype), centroids, mask)
    return centroids * mask.unsqueeze(2), mask


def aggregate_prototypes(protos: torch.Tensor, weights: torch.Tensor | None = None, k: int = 5,
                         iterations: int = 20, seed: int = 0) -> torch.Tensor:
    """The server's k global prototypes [k, D] (unit norm) from the N uploaded ones [N, D].

    Weighted spherical k-means; initialised by weighted k-means++ (distance 1 - cosine) from a
    generator seeded with `seed`, so equal inputs and seed give equal outputs. Needs N >= k.
    """
    if protos.dim() != 2 or protos.shape[0] < k or k < 1:
        raise ValueError(f"aggregate_prototypes needs protos [N >= k, D] with k >= 1; got shape "
                         f"{tuple(protos.shape)} for k={k} (lower k or upload more prototypes)")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    weights = torch.ones(protos.shape[0], device=protos.device) if weights is None else weights.to(protos.device)
    if weights.shape != protos.shape[:1] or not torch.isfinite(weights).all() or (weights < 0).any() \
            or weights.sum() <= 0:
        raise ValueError(f"weights must be [N={protos.shape[0]}], finite, >= 0, with a positive sum")
    points = F.normalize(protos.float(), dim=-1)
    weights = weights.float() * (points.abs().sum(-1) > 0)  # zero rows carry no direction
    if weights.sum() <= 0:
        raise ValueError("aggregate_prototypes: every prototype with positive weight is a zero vector")
    centroids = _kmeans_plus_plus(points, weights, k, seed)
    all_valid = torch.ones(1, k, dtype=torch.bool, device=points.device)
    for _ in range(iterations):
        centroids = _lloyd_step(points[None], weights[None], centroids[None], all_valid)[0]
    return centroids


def _lloyd_step(points: torch.Tensor, weights: torch.Tensor, centroids: torch.Tensor,
                valid: torch.Tensor) -> torch.Tensor:
    """One batched spherical k-means step: points [B, N, D] with weights [B, N] (0 = ignore),
    centroids [B, k, D] of which `valid` [B, k] take part. Returns the new centroids."""
    cosines = torch.bmm(points, centroids.transpose(1, 2)).masked_fill(~valid.unsqueeze(1), -torch.inf)
    members = F.one_hot(cosines.argmax(-1), centroids.shape[1]).to(points.dtype) * weights.unsqueeze(2)
    sums = torch.bmm(members.transpose(1, 2), points)
    kept = (members.sum(1) > 0) & valid
    return torch.where(kept.unsqueeze(2), F.normalize(sums, dim=-1), centroids)


def _kmeans_plus_plus(points: torch.Tensor, weights: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """k initial centroids [k, D]: the first drawn by weight, each next by weight * (1 - best cosine)."""
    generator = torch.Generator().manual_seed(seed)
    cpu_weights = weights.cpu().double()
    chosen = [int(torch.multinomial(cpu_weights, 1, generator=generator))]
    best = points @ points[chosen[0]]
    for _ in range(k - 1):
        spread = cpu_weights * (1 - best.cpu().double()).clamp_min(0)
        # Every remaining point coincides with a centroid: fall back to weights (a duplicate centroid).
        probabilities = spread if spread.sum() > 0 else cpu_weights
        chosen.append(int(torch.multinomial(probabilities, 1, generator=generator)))
        best = torch.maximum(best, points @ points[chosen[-1]])
    return points[chosen].clone()
