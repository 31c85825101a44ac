"""The config's sections: every setting in exactly one, each checked there."""

import pytest

from feddmmr.config import FIELDS, SECTIONS, TrainConfig


def test_the_sections_hold_every_setting_exactly_once():
    names = [name for section in SECTIONS.values() for name in section]
    assert sorted(names) == sorted(FIELDS) and len(names) == len(set(names))


def test_a_section_reads_its_settings():
    config = TrainConfig(learning_rate=0.5, dp_clip_norm=1.0)
    assert config.section("client")["learning_rate"] == 0.5
    assert config.section("privacy") == {"dp_clip_norm": 1.0, "dp_noise_multiplier": 0.0, "dp_delta": 1e-5}
    assert set(config.section("runtime")) == {"device", "amp", "seed", "run_dir", "init_from", "threads"}


@pytest.mark.parametrize("section, bad, message", [
    ("data", dict(top_users=0), "top_users must be >= 1, got 0"),
    ("model", dict(hidden_dim=0), "hidden_dim must be >= 1, got 0"),
    ("client", dict(local_optimizer="lion"), "local_optimizer='lion' is not one of adam, sgd"),
    ("server", dict(client_fraction=0.0), r"client_fraction must be in \(0, 1\], got 0.0"),
    ("engine", dict(flower_round_timeout=0.0), "flower_round_timeout must be > 0 seconds"),
    ("privacy", dict(dp_noise_multiplier=1.0), "dp_noise_multiplier needs dp_clip_norm"),
    ("feddmmr", dict(router="random"), "router='random' is not one of learned, uniform"),
    ("evaluation", dict(eval="partial"), "eval='partial' is not one of sampled, full"),
    ("runtime", dict(amp="fp8"), "amp='fp8' is not one of auto, off, fp16, bf16"),
])
def test_each_section_checks_its_settings(section, bad, message):
    assert set(bad) <= set(SECTIONS[section])
    with pytest.raises(ValueError, match=message):
        TrainConfig(**bad)
