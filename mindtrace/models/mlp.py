"""The LightningModule that trains the MLP classifier of 28x28 digits (the network itself: ``net.py``)."""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from torch.nn import functional as F

from mindtrace.models.net import MLPNet
from mindtrace.train_config import DEFAULT_DIM, DEFAULT_DROPOUT, DEFAULT_LEARNING_RATE, DEFAULT_WEIGHT_DECAY


class MLP(pl.LightningModule):
    """LightningModule around :class:`MLPNet`: cross-entropy, AdamW with a one-cycle learning rate.

    Logs ``{train,val,test}_loss`` and ``{train,val,test}_acc``.

    >>> model = MLP(dim=[784, 64, 10], dropout=0.1)
    >>> model(torch.zeros(3, 1, 28, 28)).shape
    torch.Size([3, 10])
    """

    def __init__(
        self,
        dim: Sequence[int] = DEFAULT_DIM,
        dropout: float = DEFAULT_DROPOUT,
        learning_rate: float = DEFAULT_LEARNING_RATE,
        weight_decay: float = DEFAULT_WEIGHT_DECAY,
    ):
        super().__init__()
        self.save_hyperparameters(
            {
                "dim": list(dim),
                "dropout": dropout,
                "learning_rate": learning_rate,
                "weight_decay": weight_decay,
            }
        )
        self.net = MLPNet(dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(dim=1) == y).float().mean()
        on_step = stage == "train"
        self.log(f"{stage}_loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log(f"{stage}_acc", acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay)
        # One cycle: a short warm-up, then annealing; reaches a good optimum in few epochs.
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=hp.learning_rate, total_steps=self.trainer.estimated_stepping_batches
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
