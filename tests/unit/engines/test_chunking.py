"""The vectorised engine's chunk sizes: explicit numbers win; auto follows free memory and the device."""

import logging

import pytest
import torch

from feddmmr.config import TrainConfig
from feddmmr.engines import chunking, make_engine
from feddmmr.engines.chunking import MAX_CHUNKS, client_bytes, resolve_chunks, window_bytes
from feddmmr.model.sasrec import SASRec, SASRecConfig

GiB = 2**30


def ml1m_model():
    return SASRec(SASRecConfig(num_items=3646))  # the ML-1M top-1000 catalogue at the default width


def with_free_memory(monkeypatch, free_bytes):
    monkeypatch.setattr(chunking, "free_memory", lambda device: free_bytes)


def test_explicit_sizes_win_over_auto(monkeypatch):
    with_free_memory(monkeypatch, 1)  # nothing free: auto would pick 1 / 1
    sizes = resolve_chunks("24", 100, ml1m_model(), 4, torch.device("cpu"))
    assert (sizes.clients, sizes.windows, sizes.why) == (24, 100, "as set")
    assert resolve_chunks("auto", 100, ml1m_model(), 4, torch.device("cpu")).clients == 1


def test_auto_takes_the_device_caps_when_memory_is_plentiful(monkeypatch):
    with_free_memory(monkeypatch, 120 * GiB)
    assert (
        resolve_chunks("auto", "auto", ml1m_model(), 4, torch.device("cpu")).clients,
        resolve_chunks("auto", "auto", ml1m_model(), 4, torch.device("cpu")).windows,
    ) == MAX_CHUNKS["cpu"]
    cuda = resolve_chunks("auto", "auto", ml1m_model(), 4, torch.device("cuda"))
    assert (cuda.clients, cuda.windows) == MAX_CHUNKS["cuda"] == (256, 8192)
    assert "on cuda" in cuda.why and "MiB a window" in cuda.why


def test_auto_shrinks_to_powers_of_two_that_fit_the_free_memory(monkeypatch):
    model = ml1m_model()
    with_free_memory(monkeypatch, 4 * GiB)
    sizes = resolve_chunks("auto", "auto", model, 4, torch.device("cuda"))
    budget = 4 * GiB * 0.5
    assert sizes.clients * client_bytes(model) <= budget / 4 < 2 * sizes.clients * client_bytes(model)
    assert (
        sizes.windows * window_bytes(model, 4) <= budget * 3 / 4 < 2 * sizes.windows * window_bytes(model, 4)
    )
    assert sizes.clients & (sizes.clients - 1) == 0 and sizes.windows & (sizes.windows - 1) == 0
    assert sizes.windows < MAX_CHUNKS["cuda"][1]
    # More negatives or a longer history need more memory a window: fewer windows.
    assert resolve_chunks("auto", "auto", model, 100, torch.device("cuda")).windows < sizes.windows


def test_make_engine_logs_the_sizes_it_chose(monkeypatch, caplog):
    with_free_memory(monkeypatch, 64 * GiB)
    with caplog.at_level(logging.INFO):
        engine = make_engine("vectorized", ml1m_model())
    assert (engine.chunk_clients, engine.chunk_windows) == (16, 64)
    assert "chunks of at most 16 clients / 64 windows (auto: planned for" in caplog.text


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("AUTO", "auto"), (32, "32"), ("32", "32")])
def test_config_reads_chunk_sizes_as_auto_or_a_number(value, expected):
    config = TrainConfig(chunk_clients=value, chunk_windows=value)
    assert config.chunk_clients == config.chunk_windows == expected


@pytest.mark.parametrize("value", [0, "-3", "many", True, 2.5])
def test_config_rejects_other_chunk_sizes(value):
    with pytest.raises(ValueError, match=r"chunk_clients: expected auto or a whole number >= 1, got"):
        TrainConfig(chunk_clients=value)
