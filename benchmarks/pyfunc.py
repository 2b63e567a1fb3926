"""The MLflow rival: a pyfunc for ``mlflow models serve`` running the service's ONNX graph.

It takes the documented ``{"inputs": ["<base64>", ...]}`` body and answers
``{"predictions": [{"label", "probabilities"}, ...]}``, decoding with ``mindtrace.predict.batch_pixels`` and
classifying with ``mindtrace.runtime.OnnxClassifier`` on the ``model.onnx`` file of the BentoML store entry
the service serves: the same work and the same runtime, behind MLflow's server. ``PyfuncNoop`` answers a
fixed prediction without any work: that server's own ceiling.

>>> save_pyfunc(None, Path("/tmp/noop-model"), noop=True)   # doctest: +SKIP
>>> # then: mlflow models serve -m /tmp/noop-model --env-manager local
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from mindtrace.predict import batch_pixels

FIXED = {"label": 0, "probabilities": [1.0] + [0.0] * 9}


class PyfuncClassifier(mlflow.pyfunc.PythonModel):
    """Base64 images in, one prediction per image out; its ``model`` artifact is the ONNX file."""

    def load_context(self, context: Any) -> None:
        from mindtrace.runtime import OnnxClassifier

        self.classify = OnnxClassifier(Path(context.artifacts["model"]).read_bytes())

    def predict(self, context: Any, model_input: list[str], params: dict[str, Any] | None = None) -> list:
        probs = self.classify(batch_pixels(model_input))
        return [{"label": int(p.argmax()), "probabilities": p.tolist()} for p in probs]


class PyfuncNoop(mlflow.pyfunc.PythonModel):
    """The same inputs and outputs, no work: ``mlflow models serve``'s own ceiling."""

    def predict(self, context: Any, model_input: list[str], params: dict[str, Any] | None = None) -> list:
        return [FIXED] * len(model_input)


def save_pyfunc(onnx_file: Path | None, dst: Path, noop: bool = False) -> Path:
    """Write the pyfunc wrapping the ONNX file ``onnx_file`` (copied into it), or the no-op, to ``dst``.

    It is saved as MLflow's "model from code" (a script naming the class above), not as a pickle; the server
    imports ``benchmarks.pyfunc``, so it runs in the checkout (on ``PYTHONPATH``).
    """
    cls = "PyfuncNoop" if noop else "PyfuncClassifier"
    dst.parent.mkdir(parents=True, exist_ok=True)
    script = dst.parent / f"{dst.name}_code.py"
    lines = [
        "import mlflow.models",
        f"from benchmarks.pyfunc import {cls}",
        f"mlflow.models.set_model({cls}())",
    ]
    script.write_text("\n".join(lines) + "\n")
    artifacts = None if noop else {"model": str(onnx_file)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Any is not validated": the output is ours to check
        mlflow.pyfunc.save_model(str(dst), python_model=str(script), artifacts=artifacts, pip_requirements=[])
    return dst
