"""What a dataset holds, as a run would read it: the figures RecBole prints on every load."""

from __future__ import annotations

import numpy as np

from feddmmr.data.types import SequenceData

QUANTILES = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)


def dataset_stats(data: SequenceData) -> dict:
    """Users, items, interactions, density, sequence-length quantiles and how concentrated the
    interactions are on the most popular items."""
    lengths = data.lengths
    counts = np.sort(np.bincount(data.items, minlength=data.num_items + 1)[1:])[::-1]
    top = max(1, data.num_items // 100)
    return {
        "source": data.source,
        "users": int(data.num_users),
        "items": int(data.num_items),
        "interactions": int(data.num_interactions),
        "density": float(data.num_interactions / max(1, data.num_users * data.num_items)),
        "sequence_length": {f"q{int(q * 100)}": float(np.quantile(lengths, q)) for q in QUANTILES}
        | {"mean": float(lengths.mean())},
        "interactions_per_item": {"median": float(np.median(counts)), "max": int(counts[0])},
        "share_of_top_1pct_items": float(counts[:top].sum() / max(1, counts.sum())),
        "timestamps": data.item_first_seen is not None,
    }


def format_stats(stats: dict) -> str:
    length = stats["sequence_length"]
    lines = [
        f"source        {stats['source']}",
        f"users         {stats['users']:,}",
        f"items         {stats['items']:,}",
        f"interactions  {stats['interactions']:,}  (density {stats['density']:.4%})",
        "length        " + "  ".join(f"{k} {v:g}" for k, v in length.items()),
        f"per item      median {stats['interactions_per_item']['median']:g}, max {stats['interactions_per_item']['max']:,}; "
        f"the top 1% of items hold {stats['share_of_top_1pct_items']:.1%} of the interactions",
        f"timestamps    {'yes' if stats['timestamps'] else 'no (file order is time order)'}",
    ]
    return "\n".join(lines)
