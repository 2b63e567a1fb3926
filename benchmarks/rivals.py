"""The plain FastAPI server mindtrace is measured against, doing the same work per request.

It takes the service's request bodies, decodes and preprocesses them with ``mindtrace.predict.batch_pixels``
and runs the same store entry with the same runtime (``mindtrace.registry.bento.load_classifier``, ONNX
Runtime), as the service does: the design mindtrace started from, with nothing else around it.

    MINDTRACE_BENCH_MODEL=mnist-mlp:v1-1f2e3d4c uvicorn benchmarks.rivals:fastapi_app --workers 2

``MINDTRACE_BENCH_NOOP=1`` instead answers every image with a fixed prediction without decoding it: this
server's own ceiling. The MLflow rival is in ``benchmarks.pyfunc``, so that this one never imports its code.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from mindtrace.images import ImageRejected
from mindtrace.predict import batch_pixels

FIXED = {"label": 0, "probabilities": [1.0] + [0.0] * 9}
NOOP_MODEL = {"name": "noop", "version": "0"}


class ImageIn(BaseModel):
    image: str


class ImagesIn(BaseModel):
    images: list[str]


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.noop = os.environ.get("MINDTRACE_BENCH_NOOP") == "1"
    if not app.state.noop:
        from mindtrace.registry.bento import load_classifier

        app.state.classify, model = load_classifier(os.environ["MINDTRACE_BENCH_MODEL"])
        labels = model.info.labels
        app.state.model = {"name": labels["mlflow-model"], "version": labels["mlflow-version"]}
    yield


fastapi_app = FastAPI(title="plain FastAPI digit classifier (benchmark rival)", lifespan=_lifespan)


@fastapi_app.get("/livez")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@fastapi_app.post("/inference")
async def inference(body: ImageIn) -> dict[str, Any]:
    if fastapi_app.state.noop:
        return {**FIXED, "model": NOOP_MODEL}
    probs = _probabilities([body.image])[0]
    return {"label": int(probs.argmax()), "probabilities": probs.tolist(), "model": fastapi_app.state.model}


@fastapi_app.post("/inference/batch")
async def inference_batch(body: ImagesIn) -> dict[str, Any]:
    if fastapi_app.state.noop:
        return {"predictions": [FIXED] * len(body.images), "model": NOOP_MODEL}
    probs = _probabilities(body.images)
    predictions = [{"label": int(p.argmax()), "probabilities": p.tolist()} for p in probs]
    return {"predictions": predictions, "model": fastapi_app.state.model}


def _probabilities(texts: list[str]) -> np.ndarray:
    try:
        pixels = batch_pixels(texts)
    except ImageRejected as exc:
        raise HTTPException(exc.status, str(exc)) from None
    return fastapi_app.state.classify(pixels)
