"""Multimodal sentiment metrics with MMSA's conventions, as a DDP-synchronised torchmetrics ``Metric``.

The values are those of MMSA's ``utils/metricsTop.py::__eval_mosei_regression`` (used for both MOSI and MOSEI)
computed on the same predictions, without MMSA's rounding to 4 decimals (rounding belongs to reporting, not to the
metric). Name mapping (ours -> MMSA):

================  ==================  =====================================================================
ours              MMSA                definition
================  ==================  =====================================================================
``acc2_has0``     ``Has0_acc_2``      accuracy of (pred >= 0) vs (label >= 0) over all samples
``f1_has0``       ``Has0_F1_score``   sklearn weighted F1 of the same binary view
``acc2_non0``     ``Non0_acc_2``      accuracy of (pred > 0) vs (label > 0) over samples with label != 0
                                      (a prediction of exactly 0 counts as negative)
``f1_non0``       ``Non0_F1_score``   sklearn weighted F1 of the same binary view
``acc5``          ``Mult_acc_5``      round(clip(pred, -2, 2)) == round(clip(label, -2, 2)), numpy rounding
                                      (half to even)
``acc7``          ``Mult_acc_7``      same with clip to [-3, 3]
``mae``           ``MAE``             mean |pred - label|
``corr``          ``Corr``            Pearson correlation (``np.corrcoef``)
``mse``           (none)              mean (pred - label)^2, the paper's eq. 19
``recall_has0``   (none)              recall of the positive (non-negative) class in the Has0 view
``recall_non0``   (none)              recall of the positive class in the Non0 view
``acc3``          (computed, unused)  clip to [-1, 1] and round
================  ==================  =====================================================================

The weighted F1 is :math:`\\sum_c \\frac{n_c}{N} F1_c` over the classes present in labels or predictions, with
:math:`F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)` and 0 when that denominator is 0 (sklearn's ``zero_division``
default). Non0 values are NaN when every label is 0; ``corr`` is NaN when predictions or labels are constant,
as in numpy.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = ["MSAMetrics", "msa_metrics", "weighted_binary_f1"]


def weighted_binary_f1(pred: Tensor, target: Tensor) -> Tensor:
    """sklearn's ``f1_score(target, pred, average="weighted")`` for two boolean vectors.

    Shapes:
        pred, target: ``[N]`` bool.
    """
    if target.numel() == 0:
        return torch.tensor(float("nan"), dtype=torch.float64)
    n = target.numel()
    score = torch.zeros((), dtype=torch.float64)
    for cls in (True, False):
        p = pred == cls
        t = target == cls
        tp = (p & t).sum()
        fp = (p & ~t).sum()
        fn = (~p & t).sum()
        denom = 2 * tp + fp + fn
        f1 = (2 * tp).double() / denom.double() if denom > 0 else torch.zeros((), dtype=torch.float64)
        score = score + f1 * t.sum().double() / n
    return score


def _pearson(x: Tensor, y: Tensor) -> Tensor:
    xc = x - x.mean()
    yc = y - y.mean()
    denom = torch.sqrt((xc * xc).sum() * (yc * yc).sum())
    if denom == 0:
        return torch.tensor(float("nan"), dtype=torch.float64)
    return (xc * yc).sum() / denom


def msa_metrics(pred: Tensor, target: Tensor) -> dict[str, Tensor]:
    """All MOSI/MOSEI regression metrics (see the module docstring) as float64 scalars.

    Shapes:
        pred, target: ``[N]`` (any float dtype; computed in float64).
    """
    pred = pred.detach().reshape(-1).double().cpu()
    target = target.detach().reshape(-1).double().cpu()
    if pred.shape != target.shape:
        raise ValueError(f"msa_metrics: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.numel() == 0:
        raise ValueError("msa_metrics: no samples")

    out: dict[str, Tensor] = {}
    has0_p, has0_t = pred >= 0, target >= 0
    out["acc2_has0"] = (has0_p == has0_t).double().mean()
    out["f1_has0"] = weighted_binary_f1(has0_p, has0_t)
    out["recall_has0"] = (has0_p & has0_t).sum().double() / has0_t.sum().double()

    nz = target != 0
    non0_p, non0_t = pred[nz] > 0, target[nz] > 0
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    out["acc2_non0"] = (non0_p == non0_t).double().mean() if nz.any() else nan
    out["f1_non0"] = weighted_binary_f1(non0_p, non0_t)
    out["recall_non0"] = (non0_p & non0_t).sum().double() / non0_t.sum().double()

    for name, bound in (("acc7", 3.0), ("acc5", 2.0), ("acc3", 1.0)):
        # torch.round rounds half to even, like numpy.round.
        p = torch.round(pred.clamp(-bound, bound))
        t = torch.round(target.clamp(-bound, bound))
        out[name] = (p == t).double().mean()

    diff = pred - target
    out["mae"] = diff.abs().mean()
    out["mse"] = (diff * diff).mean()
    out["corr"] = _pearson(pred, target)
    return out


class MSAMetrics(Metric):
    """Accumulates predictions and labels over an epoch (synchronised across DDP processes by concatenation)
    and computes :func:`msa_metrics` on the whole set, so values are exact, not batch averages.

    Example:
        >>> m = MSAMetrics()
        >>> m.update(torch.tensor([0.5, -1.0]), torch.tensor([1.0, -2.0]))
        >>> round(float(m.compute()["acc2_has0"]), 3)
        1.0
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor) -> None:
        self.preds.append(preds.detach().reshape(-1).float())
        self.targets.append(target.detach().reshape(-1).float())

    def compute(self) -> dict[str, Tensor]:
        return {k: v.float() for k, v in msa_metrics(dim_zero_cat(self.preds), dim_zero_cat(self.targets)).items()}
