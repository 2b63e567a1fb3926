"""The MLP network itself: plain PyTorch, no Lightning, no training config.

Everything that holds trained weights rebuilds the network here, with :func:`rebuild`: a Lightning
checkpoint, an MLflow ``pt2`` model, the BentoML store. :class:`PixelClassifier` wraps it into what serving
computes (uint8 pixels in, probabilities out), and :func:`onnx_bytes` exports that graph for ONNX Runtime.

>>> net = MLPNet([784, 16, 10])
>>> twin = rebuild({f"net.{k}": v for k, v in net.state_dict().items()}, [784, 16, 10])
>>> torch.equal(twin(torch.ones(1, 784)), net.eval()(torch.ones(1, 784)))
True
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from mindtrace.preprocess import normalize

# Images per forward pass: bounds the memory of one call however many images it is given.
CHUNK = 4096


class MLPNet(nn.Module):
    """Linear layers with ReLU and dropout between them; takes ``[B, 1, 28, 28]`` or ``[B, 784]``.

    >>> MLPNet([784, 32, 10])(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(self, dim: Sequence[int], dropout: float = 0.0):
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


def rebuild(state_dict: Mapping[str, torch.Tensor], dim: Sequence[int]) -> MLPNet:
    """The eval-mode :class:`MLPNet` of layer sizes ``dim`` holding ``state_dict``: the one way from weights.

    Keys may carry the ``net.`` prefix of a Lightning ``MLP`` checkpoint; keys of anything else in it (an
    optimizer, a metric) are ignored. Every layer must be there with its exact shape, or this raises.
    """
    weights = {
        k.removeprefix("net."): v
        for k, v in state_dict.items()
        if k.removeprefix("net.").startswith("layers.")
    }
    net = MLPNet(dim)
    net.load_state_dict(weights, strict=True)
    return net.eval()


def load_checkpoint(path: str | os.PathLike, dim: Sequence[int]) -> MLPNet:
    """The network in a Lightning checkpoint of an ``MLP``, read without unpickling code."""
    return rebuild(torch.load(path, map_location="cpu", weights_only=True)["state_dict"], dim)


class PixelClassifier(nn.Module):
    """uint8 pixels ``[n, 28, 28]`` to class probabilities ``[n, 10]``: normalize, the MLP, softmax.

    The graph the service runs: exported to ONNX by :func:`onnx_bytes`, so serving and training share
    ``normalize`` itself rather than a copy of its constants.

    >>> PixelClassifier(MLPNet([784, 8, 10]).eval())(torch.zeros(3, 28, 28, dtype=torch.uint8)).shape
    torch.Size([3, 10])
    """

    def __init__(self, net: MLPNet):
        super().__init__()
        self.net = net
        self.eval()  # no dropout, here or in the exported graph

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(normalize(pixels)), dim=1)


def probabilities(net: MLPNet, pixels: np.ndarray) -> np.ndarray:
    """Class probabilities ``[n, 10]`` (float32) for uint8 pixels ``[n, 28, 28]``, with eager PyTorch.

    >>> probabilities(MLPNet([784, 8, 10]), np.zeros((2, 28, 28), np.uint8)).shape
    (2, 10)
    """
    classifier = PixelClassifier(net)
    with torch.inference_mode():
        parts = [classifier(torch.from_numpy(pixels[i : i + CHUNK])) for i in range(0, len(pixels), CHUNK)]
    return torch.cat(parts).numpy()


def onnx_bytes(net: MLPNet) -> bytes:
    """The :class:`PixelClassifier` of ``net`` as an ONNX model: input ``pixels`` uint8 ``[n, 28, 28]``,
    output ``probabilities`` float32 ``[n, 10]``, any ``n``.

    >>> len(onnx_bytes(MLPNet([784, 8, 10]))) > 6000
    True
    """
    example = torch.zeros(2, 28, 28, dtype=torch.uint8)  # two images: one would pin the batch size to 1
    # torch's exporter lists every torchvision operator it cannot register (none is used here) as a warning.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        program = torch.onnx.export(
            PixelClassifier(net),
            (example,),
            input_names=["pixels"],
            output_names=["probabilities"],
            dynamic_shapes=({0: torch.export.Dim("n")},),
            dynamo=True,
            verbose=False,
        )
    finally:
        registration.setLevel(level)
    return program.model_proto.SerializeToString()
