"""The service's no-op twin: the same BentoML settings, middleware, routes and bodies, and no work at all.

The serving benchmark measures it as the service's own ceiling: what BentoML can answer on this machine when
the inference itself costs nothing. It answers every image with a fixed prediction, unchecked. It shares
``service.settings``, ``service.spread``, ``service.guard`` and ``service.direct`` with the service, not
``service.app``, which would load the model.

    bentoml serve benchmarks.noop:svc
"""

from __future__ import annotations

from typing import Annotated

import bentoml
from pydantic import Field

from service.direct import Direct
from service.guard import INFERENCE_PATHS, Guard
from service.schemas import MAX_BATCH, BatchResponse, InferenceResponse, ModelRef, Prediction
from service.settings import GUARD_OPTIONS, SERVICE_CONFIG, SPREAD_CONNECTIONS, settle_the_collector
from service.spread import Spread

FIXED = Prediction(label=0, probabilities=[1.0] + [0.0] * 9, prediction_id="0" * 16)
MODEL = ModelRef(name="noop", version="0")


@bentoml.service(name="mindtrace-noop", **SERVICE_CONFIG)
class Noop:
    @bentoml.on_startup
    def _settle_the_collector(self) -> None:
        settle_the_collector()  # as the service's workers do: the same collector, a fair ceiling

    @bentoml.api(route="/inference")
    async def inference(self, image: str) -> InferenceResponse:
        return InferenceResponse(**FIXED.model_dump(), model=MODEL)

    @bentoml.api(route="/inference/batch")
    async def inference_batch(
        self, images: Annotated[list[str], Field(min_length=1, max_length=MAX_BATCH)]
    ) -> BatchResponse:
        return BatchResponse(predictions=[FIXED] * len(images), model=MODEL)


if SPREAD_CONNECTIONS:
    Noop.add_asgi_middleware(Spread)
Noop.add_asgi_middleware(Guard, **GUARD_OPTIONS)
Noop.add_asgi_middleware(Direct, service=Noop, paths=INFERENCE_PATHS)
svc = Noop
