"""How a trained MLP is stored in MLflow and read back, without unpickling anything.

The model is an MLflow ``pytorch`` model in the ``pt2`` format (``torch.export``): MLflow users load it with
``mlflow.pytorch.load_model`` or ``mlflow.pyfunc``, ``mlflow models serve`` serves it, and loading it runs no
pickled code. The MLP's layer sizes travel in the MLmodel metadata, so mindtrace rebuilds the plain eager
``MLPNet`` from the exported weights: the fastest module to serve, and the same numbers.

>>> import tempfile, torch
>>> from mindtrace.models.net import MLPNet, rebuild
>>> net, path = MLPNet([784, 16, 10]), Path(tempfile.mkdtemp()) / "model"
>>> save_mlflow_model(net, path, torch.zeros(2, 1, 28, 28))   # doctest: +SKIP
>>> torch.equal(load_mlp(path)(torch.ones(1, 784)), net.eval()(torch.ones(1, 784)))   # doctest: +SKIP
True
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

import mindtrace
from mindtrace.models.net import MLPNet, rebuild
from mindtrace.monitoring.drift import REFERENCE_FILE, REFERENCE_PATH, Reference
from mindtrace.preprocess import SPEC
from mindtrace.registry.query import ARTIFACT_TAG_PREFIX

if TYPE_CHECKING:
    from mlflow import MlflowClient

# Where a run keeps each artifact, relative to its artifact root.
MODEL_PATH = "model"
CHECKPOINT_PATH = "checkpoints"
EVALUATION_PATH = "evaluation"
DATA_PATH = "data"
REFERENCE_TAG = f"{ARTIFACT_TAG_PREFIX}reference"  # the run tag naming the drift reference


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, 28, 28))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 10))]),
    )


def save_mlflow_model(net: MLPNet, path: Path, input_example: torch.Tensor) -> None:
    """Write ``net`` as an MLflow model folder at ``path``.

    ``input_example`` is a few normalized digits ``[N, 1, 28, 28]``, N >= 2: torch.export traces with it,
    and a batch of one would pin the exported batch size to one.
    """
    import mlflow.pytorch

    if input_example.shape[0] < 2:
        raise ValueError(
            "the input example needs at least two images, or the export fixes the batch size to 1"
        )
    mlflow.pytorch.save_model(
        net.eval(),
        str(path),
        serialization_format="pt2",
        signature=_signature(),
        input_example=input_example.numpy(),
        # Listed, not inferred: inference imports the model in a subprocess and takes seconds.
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
        metadata={"mindtrace": {"version": mindtrace.__version__, "dim": net.dim, "preprocessing": SPEC}},
    )


def load_mlp(path: str | Path) -> MLPNet:
    """Rebuild the eager ``MLPNet`` from an MLflow model folder written by :func:`save_mlflow_model`.

    Raises ValueError when the folder is not such a model.
    """
    from mlflow.models import Model

    path = Path(path)
    try:
        meta = (Model.load(str(path)).metadata or {}).get("mindtrace", {})
    except Exception as exc:  # MLflow raises its own exception types for a missing or unreadable MLmodel
        raise ValueError(f"{path} is not an MLflow model folder: {exc}") from None
    weights = sorted(path.glob("data/*.pt2"))
    if "dim" not in meta or not weights:
        raise ValueError(
            f"{path} is not a mindtrace MLP saved in the pt2 format (no layer sizes or no .pt2 file)"
        )
    # torch.export archives hold a graph and raw tensors; loading one runs no pickled code.
    return rebuild(torch.export.load(str(weights[0])).state_dict, meta["dim"])


def log_reference(client: MlflowClient, run_id: str, reference: Reference) -> None:
    """Record ``reference`` (``mindtrace.monitoring.drift``) in run ``run_id`` and tag the run with its path.

    >>> log_reference(registry.client, run_id, build_reference(net))   # doctest: +SKIP
    """
    with tempfile.TemporaryDirectory(prefix="mindtrace-reference-") as tmp:
        path = Path(tmp) / REFERENCE_FILE
        path.write_bytes(reference.to_bytes())
        client.log_artifact(run_id, str(path), str(Path(REFERENCE_PATH).parent))
    client.set_tag(run_id, REFERENCE_TAG, REFERENCE_PATH)
