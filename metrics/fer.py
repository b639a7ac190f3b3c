"""Classification metrics of the learning-emotion paper (§3.2: Acc, mean class accuracy, macro F1, per-class
precision/recall, confusion matrix), as one torchmetrics collection per stage.

Reference: JI L X, REN H L, WANG W, et al. Multimodal and multiscale facial expression recognition analysis for
learning emotions. J. Zhengzhou Univ. (Eng. Sci.), 2026, 47(3): 126-133.

Key names (``{stage}/`` is prepended by the system):

====================  =====================================================================
``acc``               overall accuracy (paper "Acc")
``mean_class_acc``    mean of per-class recalls, i.e. macro recall (paper "M_Acc")
``f1_macro``          unweighted mean of per-class F1 (paper "F1")
``precision_macro``   unweighted mean of per-class precision (paper Table 3 "Precision")
``recall_macro``      same value as ``mean_class_acc`` (paper Table 3 "Recall")
``precision_<c>``     precision of class ``c``
``recall_<c>``        recall of class ``c``
====================  =====================================================================
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

__all__ = ["FERMetrics", "PredictionCounts"]


class FERMetrics(nn.Module):
    """Accuracy, mean class accuracy, macro F1, per-class precision/recall and the confusion matrix.

    Args:
        num_classes: Number of classes ``K``.

    Shapes:
        preds: ``[B, K]`` logits or probabilities, or ``[B]`` class indices
        target: ``[B]`` int64 class indices
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"FERMetrics: num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        k = num_classes
        self.scores = MetricCollection(
            {
                "acc": MulticlassAccuracy(k, average="micro"),
                "mean_class_acc": MulticlassRecall(k, average="macro"),
                "f1_macro": MulticlassF1Score(k, average="macro"),
                "precision_macro": MulticlassPrecision(k, average="macro"),
                "precision_per_class": MulticlassPrecision(k, average="none"),
                "recall_per_class": MulticlassRecall(k, average="none"),
            },
            compute_groups=False,  # micro "acc" keeps summed states, unlike the per-class metrics
        )
        self.confusion = MulticlassConfusionMatrix(k)

    @property
    def update_called(self) -> bool:
        return self.confusion.update_called

    def update(self, preds: Tensor, target: Tensor) -> None:
        self.scores.update(preds, target)
        self.confusion.update(preds, target)

    def compute(self, class_names: list[str] | None = None, per_class: bool = True) -> dict[str, Tensor]:
        """Scalar metrics keyed as in the module docstring (synchronised across processes by torchmetrics)."""
        values = self.scores.compute()
        names = class_names or [str(i) for i in range(self.num_classes)]
        out = {k: values[k] for k in ("acc", "mean_class_acc", "f1_macro", "precision_macro")}
        out["recall_macro"] = values["mean_class_acc"]
        if per_class:
            for i, name in enumerate(names):
                out[f"precision_{name}"] = values["precision_per_class"][i]
                out[f"recall_{name}"] = values["recall_per_class"][i]
        return out

    def compute_confusion(self) -> Tensor:
        """``[K, K]`` counts, rows = true class, columns = predicted class."""
        return self.confusion.compute()

    def reset(self) -> None:
        self.scores.reset()
        self.confusion.reset()


class PredictionCounts(Metric):
    """How often each class was predicted (argmax) and how often it was the target over an epoch.

    The collapse check of :class:`lightning_modules.fer.LitFER` reads it: a whole epoch of predictions on one
    class while the targets span several classes means the model has collapsed. States are summed across
    processes, so every rank sees the same counts.

    Args:
        num_classes: Number of classes ``K``.

    Shapes:
        preds: ``[B, K]`` logits or ``[B]`` class indices; target: ``[B]`` int64
        compute(): ``[2, K]`` int64 — row 0 predicted counts, row 1 target counts
    """

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"PredictionCounts: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.add_state("predicted", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("targets", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        idx = preds.argmax(dim=1) if preds.ndim == 2 else preds
        self.predicted += torch.bincount(idx.long().flatten(), minlength=self.num_classes)[: self.num_classes]
        self.targets += torch.bincount(target.long().flatten(), minlength=self.num_classes)[: self.num_classes]

    def compute(self) -> Tensor:
        return torch.stack([self.predicted, self.targets])
