"""FedDMMR's local dynamic memory: a two-tier (short-term FIFO + long-term) memory per client,
stored for all clients as batched tensors."""

from feddmmr.memory.two_tier import (
    MemoryConfig,
    MemoryState,
    empty_memory,
    retrieve,
    scatter,
    select,
    summary,
    update_memory,
    utility,
)

__all__ = [
    "MemoryConfig",
    "MemoryState",
    "empty_memory",
    "retrieve",
    "scatter",
    "select",
    "summary",
    "update_memory",
    "utility",
]
