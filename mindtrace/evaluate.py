"""Evaluate a classifier on a labelled set: accuracy, loss, macro F1, per-class accuracy, confusion matrix.

The MLflow callback records these figures for every run, and the promotion gate computes them for the
champion and the challenger on the same test set, so both use this one function.

>>> import torch
>>> from mindtrace.models import MLPNet
>>> x, y = torch.zeros(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
>>> report = evaluate(MLPNet([784, 8, 10]), [(x, y)])
>>> report.num_examples, len(report.confusion_matrix)
(4, 10)
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import torch
from pydantic import BaseModel
from torch import nn
from torch.nn import functional as F

NUM_CLASSES = 10


class Evaluation(BaseModel):
    """A model's figures on one labelled set. ``confusion_matrix[true][predicted]`` counts examples."""

    num_examples: int
    accuracy: float
    loss: float
    macro_f1: float
    per_class_accuracy: list[float]
    confusion_matrix: list[list[int]]

    def metrics(self, prefix: str = "test_") -> dict[str, float]:
        """Flat metrics as MLflow logs them: ``test_acc``, ``test_macro_f1``, ``test_acc_class_K``...

        >>> sorted(Evaluation(num_examples=1, accuracy=1, loss=0, macro_f1=1, per_class_accuracy=[1],
        ...                   confusion_matrix=[[1]]).metrics())
        ['test_acc', 'test_acc_class_0', 'test_loss', 'test_macro_f1']
        """
        flat = {f"{prefix}acc": self.accuracy, f"{prefix}loss": self.loss, f"{prefix}macro_f1": self.macro_f1}
        flat.update({f"{prefix}acc_class_{k}": v for k, v in enumerate(self.per_class_accuracy)})
        return flat


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Evaluation:
    """Run ``model`` in eval mode over ``(inputs, labels)`` batches and summarize its predictions.

    The model's train/eval mode is restored afterwards, so this is safe to call in the middle of training.
    """
    was_training = model.training
    model.eval()
    confusion = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
    loss_sum, count = 0.0, 0
    try:
        for x, y in batches:
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            count += len(y)
            pairs = y * NUM_CLASSES + logits.argmax(dim=1)
            confusion += torch.bincount(pairs, minlength=NUM_CLASSES**2).view(NUM_CLASSES, NUM_CLASSES)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("nothing to evaluate: the batches were empty")
    correct = confusion.diag().double()
    support = confusion.sum(dim=1).double()  # true examples per class
    predicted = confusion.sum(dim=0).double()
    recall = torch.where(support > 0, correct / support.clamp(min=1), torch.zeros_like(correct))
    precision = torch.where(predicted > 0, correct / predicted.clamp(min=1), torch.zeros_like(correct))
    denominator = precision + recall
    f1 = torch.where(denominator > 0, 2 * precision * recall / denominator.clamp(min=1e-12), 0.0)
    present = support > 0  # classes absent from the set do not drag the macro average down
    return Evaluation(
        num_examples=count,
        accuracy=correct.sum().item() / count,
        loss=loss_sum / count,
        macro_f1=f1[present].mean().item(),
        per_class_accuracy=recall.tolist(),
        confusion_matrix=confusion.tolist(),
    )


def confusion_matrix_png(evaluation: Evaluation, title: str = "confusion matrix") -> bytes:
    """The confusion matrix as a PNG heat map, with counts in the cells and per-class accuracy on the axis."""
    import matplotlib

    matplotlib.use("Agg")  # no display here; must precede pyplot
    from matplotlib import pyplot as plt

    cm = evaluation.confusion_matrix
    fig, ax = plt.subplots(figsize=(7.5, 6.5), dpi=110)
    image = ax.imshow(cm, cmap="Blues", norm=matplotlib.colors.LogNorm(vmin=1, vmax=max(map(max, cm)) or 1))
    fig.colorbar(image, ax=ax, label="examples (log scale)")
    threshold = max(map(max, cm)) / 4
    for i, row in enumerate(cm):
        for j, count in enumerate(row):
            if count:
                colour = "white" if count > threshold else "black"
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color=colour)
    labels = [f"{k}\n{acc:.1%}" for k, acc in enumerate(evaluation.per_class_accuracy)]
    ax.set_xticks(range(NUM_CLASSES), [str(k) for k in range(NUM_CLASSES)])
    ax.set_yticks(range(NUM_CLASSES), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (per-class accuracy)")
    ax.set_title(f"{title}: accuracy {evaluation.accuracy:.2%}, macro F1 {evaluation.macro_f1:.4f}")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
