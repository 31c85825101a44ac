import math

import numpy as np
import pytest
import torch

from feddmmr.evaluation import metrics_from_ranks, ranks_of_first


def test_metrics_on_hand_computed_ranks():
    m = metrics_from_ranks(np.array([0, 4, 9, 30]))
    assert m["HR@5"] == pytest.approx(0.5)
    assert m["HR@10"] == pytest.approx(0.75)
    assert m["HR@20"] == pytest.approx(0.75)
    assert m["NDCG@5"] == pytest.approx((1 + 1 / math.log2(6)) / 4)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(6) + 1 / math.log2(11)) / 4)
    assert m["MRR"] == pytest.approx((1 + 1 / 5 + 1 / 10 + 1 / 31) / 4)


def test_score_ties_never_favour_the_positive():
    scores = torch.tensor([[1.0, 1.0, 1.0, 0.0], [2.0, 1.0, 3.0, 2.0], [5.0, 1.0, 1.0, 1.0]])
    assert ranks_of_first(scores).tolist() == [2, 2, 0]
    # A model that scores everything the same ranks the positive last, not first.
    assert ranks_of_first(torch.zeros(1, 101)).tolist() == [100]


def test_nan_positive_ranks_last():
    assert ranks_of_first(torch.tensor([[float("nan"), 0.0, 1.0]])).tolist() == [2]
