"""MSAMetrics against MMSA's conventions (utils/metricsTop.py, regression branch)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from metrics.msa import MSAMetrics, msa_metrics, weighted_binary_f1


def mmsa_reference(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """MMSA's __eval_mosei_regression formulas (numpy + sklearn), without its final rounding."""
    a7p, a7t = np.clip(pred, -3.0, 3.0), np.clip(truth, -3.0, 3.0)
    a5p, a5t = np.clip(pred, -2.0, 2.0), np.clip(truth, -2.0, 2.0)
    non_zeros = np.array([i for i, e in enumerate(truth) if e != 0])
    nz_truth, nz_pred = truth[non_zeros] > 0, pred[non_zeros] > 0
    b_truth, b_pred = truth >= 0, pred >= 0
    return {
        "acc2_has0": accuracy_score(b_pred, b_truth),
        "f1_has0": f1_score(b_truth, b_pred, average="weighted"),
        "acc2_non0": accuracy_score(nz_pred, nz_truth),
        "f1_non0": f1_score(nz_truth, nz_pred, average="weighted"),
        "acc5": np.sum(np.round(a5p) == np.round(a5t)) / float(len(truth)),
        "acc7": np.sum(np.round(a7p) == np.round(a7t)) / float(len(truth)),
        "mae": np.mean(np.absolute(pred - truth)),
        "corr": np.corrcoef(pred, truth)[0][1],
    }


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_mmsa_on_random_predictions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 257
    # MOSI-like labels: multiples of 1/3 plus exact zeros; predictions with exact zeros and .5 ties.
    truth = np.round(rng.uniform(-3, 3, n) * 3) / 3
    truth[rng.choice(n, 20, replace=False)] = 0.0
    pred = rng.normal(0, 1.5, n)
    pred[rng.choice(n, 10, replace=False)] = 0.0
    pred[rng.choice(n, 10, replace=False)] = rng.choice([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5], 10)
    ref = mmsa_reference(pred, truth)
    ours = msa_metrics(torch.from_numpy(pred), torch.from_numpy(truth))
    for key, value in ref.items():
        assert float(ours[key]) == pytest.approx(float(value), abs=1e-6), key


def test_hand_computed_ties_at_zero() -> None:
    # labels:      0 (neutral), 1, -1, 2
    # predictions: 0 (tie),    -0.2, 0 (tie), 2.5
    truth = torch.tensor([0.0, 1.0, -1.0, 2.0])
    pred = torch.tensor([0.0, -0.2, 0.0, 2.5])
    m = msa_metrics(pred, truth)
    # Has0: truth>=0 -> [T, T, F, T]; pred>=0 -> [T, F, T, T]: 2 of 4 right.
    assert float(m["acc2_has0"]) == pytest.approx(0.5)
    # Non0 drops the zero label; pred 0 counts as negative: truth>0 [T, F, T], pred>0 [F, F, T]: 2 of 3.
    assert float(m["acc2_non0"]) == pytest.approx(2 / 3)
    # Weighted F1 of Non0: class T (support 2): tp=1, fp=0, fn=1 -> 2/3; class F (support 1): tp=1, fp=1, fn=0 -> 2/3.
    assert float(m["f1_non0"]) == pytest.approx(2 / 3)
    # Acc-7: round(clip) pred [0, -0, 0, 2] (2.5 rounds half to even -> 2) vs truth [0, 1, -1, 2]: 2 of 4.
    assert float(m["acc7"]) == pytest.approx(0.5)
    assert float(m["mae"]) == pytest.approx((0 + 1.2 + 1 + 0.5) / 4)
    assert float(m["mse"]) == pytest.approx((0 + 1.44 + 1 + 0.25) / 4)
    # Positive-class recalls: Has0 positives [0, 1, 3] -> predicted positive at 0 and 3 -> 2/3.
    assert float(m["recall_has0"]) == pytest.approx(2 / 3)
    assert float(m["recall_non0"]) == pytest.approx(1 / 2)


def test_half_to_even_rounding_for_acc5() -> None:
    # 0.5 -> 0, 1.5 -> 2, -0.5 -> -0, -2.5 clipped to -2: numpy's rounding, not half away from zero.
    pred = torch.tensor([0.5, 1.5, -0.5, -2.5])
    truth = torch.tensor([0.0, 2.0, 0.0, -2.0])
    assert float(msa_metrics(pred, truth)["acc5"]) == 1.0
    assert float(msa_metrics(pred, torch.tensor([1.0, 1.0, -1.0, -3.0]))["acc5"]) == 0.25


def test_weighted_f1_matches_sklearn_with_absent_class() -> None:
    t = torch.tensor([True, True, True])
    p = torch.tensor([True, False, True])
    expected = f1_score(t.numpy(), p.numpy(), average="weighted", zero_division=0)
    assert float(weighted_binary_f1(p, t)) == pytest.approx(expected)


def test_all_zero_labels_give_nan_non0() -> None:
    m = msa_metrics(torch.tensor([0.3, -0.2]), torch.zeros(2))
    assert math.isnan(float(m["acc2_non0"]))
    assert float(m["acc2_has0"]) == 0.5


def test_metric_accumulates_batches_exactly() -> None:
    rng = torch.Generator().manual_seed(0)
    pred, truth = torch.randn(50, generator=rng), torch.randn(50, generator=rng).clamp(-3, 3)
    metric = MSAMetrics()
    for chunk in range(0, 50, 16):
        metric.update(pred[chunk : chunk + 16], truth[chunk : chunk + 16])
    whole = msa_metrics(pred, truth)
    got = metric.compute()
    for key in whole:
        assert float(got[key]) == pytest.approx(float(whole[key]), abs=1e-6), key


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="differ"):
        msa_metrics(torch.zeros(3), torch.zeros(4))
