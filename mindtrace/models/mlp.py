"""The MLP classifier of 28x28 digits: a plain ``nn.Module`` and the LightningModule that trains it."""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F

from mindtrace.train_config import DEFAULT_DIM, DEFAULT_DROPOUT, DEFAULT_LEARNING_RATE, DEFAULT_WEIGHT_DECAY


class MLPNet(nn.Module):
    """Linear layers with ReLU and dropout between them; takes ``[B, 1, 28, 28]`` or ``[B, 784]``.

    >>> MLPNet([784, 32, 10])(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(self, dim: Sequence[int] = DEFAULT_DIM, dropout: float = DEFAULT_DROPOUT):
        super().__init__()
        if len(dim) < 2 or any(d < 1 for d in dim):
            raise ValueError(f"dim needs an input and an output size, all positive; got {list(dim)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout}")
        self.dim = list(dim)  # kept so that a saved model can be rebuilt from its weights
        layers: list[nn.Module] = [nn.Flatten()]
        for i, (d_in, d_out) in enumerate(zip(dim[:-1], dim[1:], strict=True)):
            layers.append(nn.Linear(d_in, d_out))
            if i < len(dim) - 2:
                layers += [nn.ReLU(inplace=True), nn.Dropout(dropout)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


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
