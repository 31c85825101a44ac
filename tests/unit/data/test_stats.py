import numpy as np
from typer.testing import CliRunner

from feddmmr.cli import app
from feddmmr.data.stats import dataset_stats, format_stats
from feddmmr.data.types import SequenceData


def test_the_figures_of_a_small_dataset():
    # user 1: items 1 2 3; user 2: items 1 1 2 4 (4 items, 7 interactions)
    data = SequenceData(
        user_ids=np.array([1, 2]),
        item_ids=np.array([0, 10, 20, 30, 40]),
        offsets=np.array([0, 3, 7]),
        items=np.array([1, 2, 3, 1, 1, 2, 4]),
        source="hand",
    )
    stats = dataset_stats(data)
    assert (stats["users"], stats["items"], stats["interactions"]) == (2, 4, 7)
    assert stats["density"] == 7 / 8
    assert stats["sequence_length"]["q0"] == 3 and stats["sequence_length"]["q100"] == 4
    assert stats["sequence_length"]["mean"] == 3.5
    assert stats["interactions_per_item"] == {"median": 1.5, "max": 3}
    assert stats["share_of_top_1pct_items"] == 3 / 7  # 1% of 4 items rounds up to the top one
    assert not stats["timestamps"]
    text = format_stats(stats)
    assert "interactions  7  (density 87.5000%)" in text and "max 3" in text


def test_the_cli_describes_the_built_in_data():
    result = CliRunner().invoke(app, ["data", "stats", "--json"])
    assert result.exit_code == 0, result.output
    stats = __import__("json").loads(result.output[result.output.index("{") :])
    assert stats["users"] == 500 and stats["items"] == 1000
