"""The config's sections: every setting in exactly one, each checked there."""

import pytest

from feddmmr.config import FIELDS, SECTIONS, TrainConfig
from feddmmr.errors import InputError


def test_the_sections_hold_every_setting_exactly_once():
    names = [name for section in SECTIONS.values() for name in section]
    assert sorted(names) == sorted(FIELDS) and len(names) == len(set(names))


@pytest.mark.parametrize(
    "section, bad, message",
    [
        ("data", dict(top_users=0), "top_users: expected a whole number >= 1, got 0"),
        ("data", dict(format="ml-1m"), "format needs data_dir"),
        ("model", dict(hidden_dim=0), "hidden_dim: expected a whole number >= 1, got 0"),
        ("model", dict(hidden_dim=64, num_heads=3), "hidden_dim=64 must be a multiple of num_heads=3"),
        ("client", dict(local_optimizer="lion"), "local_optimizer: expected one of adam, sgd, got 'lion'"),
        ("server", dict(client_fraction=0.0), r"client_fraction: expected a number in \(0, 1\], got 0.0"),
        ("engine", dict(flower_round_timeout=0.0), "flower_round_timeout: expected a number > 0, got 0.0"),
        ("privacy", dict(dp_noise_multiplier=1.0), "dp_noise_multiplier needs dp_clip_norm"),
        ("feddmmr", dict(router="random"), "router: expected one of learned, uniform, got 'random'"),
        ("evaluation", dict(eval="partial"), "eval: expected one of sampled, full, got 'partial'"),
        ("runtime", dict(amp="fp8"), "amp: expected one of auto, off, fp16, bf16, got 'fp8'"),
    ],
)
def test_each_section_checks_its_settings(section, bad, message):
    assert set(bad) <= set(SECTIONS[section])
    with pytest.raises(ValueError, match=message):
        TrainConfig(**bad)


def test_settings_centralized_training_would_ignore_are_refused():
    with pytest.raises(InputError, match="--centralized trains one model .* engine=flower"):
        TrainConfig(centralized=True, engine="flower")
    with pytest.raises(
        InputError, match="--centralized has no client updates to aggregate; drop aggregator=krum"
    ):
        TrainConfig(centralized=True, aggregator="krum")


def test_a_dropout_the_model_cannot_draw_is_refused():
    TrainConfig(dropout=255 / 256)
    with pytest.raises(ValueError, match=r"dropout: expected a number in \[0, 0.996094\], got 0.999"):
        TrainConfig(dropout=0.999)
