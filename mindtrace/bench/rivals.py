"""The servers mindtrace is measured against, doing the same work per request.

Each takes base64 PNG text, decodes and preprocesses it with ``mindtrace.predict.batch_pixels`` and runs the
same registered model version with ``mindtrace.predict.probabilities``, as the service does:

- ``fastapi_app``: a plain FastAPI + uvicorn app with the service's request and response bodies (the design
  mindtrace started from). ``uvicorn mindtrace.bench.rivals:fastapi_app --workers 2`` with
  ``MINDTRACE_BENCH_MODEL`` naming a BentoML model tag (an import of the version being measured).
- ``PyfuncClassifier``: an MLflow pyfunc for ``mlflow models serve``. It takes the documented
  ``{"inputs": ["<base64>", ...]}`` body and answers ``{"predictions": [{"label", "probabilities"}, ...]}``.
  The registered model itself takes normalized tensors; this wrapper gives MLflow the same decoding work.

``MINDTRACE_BENCH_NOOP=1`` (FastAPI) and ``PyfuncNoop`` (MLflow) answer every image with a fixed prediction
without decoding it: each server's own ceiling.

>>> save_pyfunc(None, Path("/tmp/noop-model"), noop=True)   # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import torch
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from mindtrace.images import ImageRejected
from mindtrace.predict import batch_pixels, probabilities

FIXED = {"label": 0, "probabilities": [1.0] + [0.0] * 9}


class ImageIn(BaseModel):
    image: str


class ImagesIn(BaseModel):
    images: list[str]


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    from mindtrace.registry.bento import load_bento_mlp

    torch.set_num_threads(1)  # one thread per worker process, as in the service
    app.state.noop = os.environ.get("MINDTRACE_BENCH_NOOP") == "1"
    if not app.state.noop:
        app.state.net, model = load_bento_mlp(os.environ["MINDTRACE_BENCH_MODEL"])
        app.state.model = {
            "name": model.info.labels["mlflow-model"],
            "version": model.info.labels["mlflow-version"],
        }
    yield


fastapi_app = FastAPI(title="plain FastAPI digit classifier (benchmark rival)", lifespan=_lifespan)


@fastapi_app.get("/livez")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@fastapi_app.post("/inference")
async def inference(body: ImageIn) -> dict[str, Any]:
    if fastapi_app.state.noop:
        return {**FIXED, "model": {"name": "noop", "version": "0"}}
    probs = probabilities(fastapi_app.state.net, _pixels([body.image]))[0]
    return {"label": int(probs.argmax()), "probabilities": probs.tolist(), "model": fastapi_app.state.model}


@fastapi_app.post("/inference/batch")
async def inference_batch(body: ImagesIn) -> dict[str, Any]:
    if fastapi_app.state.noop:
        return {"predictions": [FIXED] * len(body.images), "model": {"name": "noop", "version": "0"}}
    probs = probabilities(fastapi_app.state.net, _pixels(body.images))
    predictions = [{"label": int(p.argmax()), "probabilities": p.tolist()} for p in probs]
    return {"predictions": predictions, "model": fastapi_app.state.model}


def _pixels(texts: list[str]) -> np.ndarray:
    try:
        return batch_pixels(texts)
    except ImageRejected as exc:
        raise HTTPException(exc.status, str(exc)) from None


class PyfuncClassifier(mlflow.pyfunc.PythonModel):
    """Base64 images in, one prediction per image out; its ``model`` artifact is the version's folder."""

    def load_context(self, context: Any) -> None:
        from mindtrace.registry.artifacts import load_mlp

        torch.set_num_threads(1)
        self.net = load_mlp(context.artifacts["model"])

    def predict(self, context: Any, model_input: list[str], params: dict[str, Any] | None = None) -> list:
        probs = probabilities(self.net, batch_pixels(model_input))
        return [{"label": int(p.argmax()), "probabilities": p.tolist()} for p in probs]


class PyfuncNoop(mlflow.pyfunc.PythonModel):
    """The same inputs and outputs, no work: ``mlflow models serve``'s own ceiling."""

    def predict(self, context: Any, model_input: list[str], params: dict[str, Any] | None = None) -> list:
        return [FIXED] * len(model_input)


def save_pyfunc(model_dir: Path | None, dst: Path, noop: bool = False) -> Path:
    """Write the pyfunc wrapping the MLflow model folder ``model_dir`` (or the no-op) to ``dst``.

    It is saved as MLflow's "model from code" (a two-line script naming the class above), not as a pickle.
    """
    cls = "PyfuncNoop" if noop else "PyfuncClassifier"
    dst.parent.mkdir(parents=True, exist_ok=True)
    script = dst.parent / f"{dst.name}_code.py"
    lines = [
        "import mlflow.models",
        f"from mindtrace.bench.rivals import {cls}",
        f"mlflow.models.set_model({cls}())",
    ]
    script.write_text("\n".join(lines) + "\n")
    artifacts = None if noop else {"model": str(model_dir)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Any is not validated": the output is ours to check
        mlflow.pyfunc.save_model(str(dst), python_model=str(script), artifacts=artifacts, pip_requirements=[])
    return dst
