"""The BentoML service: inference with adaptive batching, retraining, registry routes, hot-swap, monitoring.

Settings come from the ``[SERVICE]`` section of the mindtrace config (environment:
``MINDTRACE__SERVICE__<KEY>``); tokens from ``MINDTRACE_API_TOKEN`` and ``MINDTRACE_INFERENCE_TOKEN``.

BentoML's supervising process imports this module only to read the service's configuration, so what is
imported here stays light; each worker loads ONNX Runtime and the model in ``__init__``, and worker 1 also
MLflow's client (``service.watcher`` says why only worker 1).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, cast

import bentoml
import numpy as np
from pydantic import Field
from pydantic_core import to_json
from starlette.responses import JSONResponse, Response

from mindtrace.images import ImageLimits, ImageRejected
from mindtrace.jobs import JobState, JobStore
from mindtrace.monitoring import MonitoringSettings, PredictionLog, Retention
from mindtrace.monitoring.store import log_path
from mindtrace.monitoring.trigger import RetrainPolicy
from mindtrace.predict import batch_pixels, digit_pixels
from mindtrace.registry.errors import RegistryUnavailableError
from mindtrace.registry.schemas import AliasEvent
from mindtrace.train_config import TrainRequest
from service import control, logs, metrics, oip
from service.batching import NotServing, Overloaded, Predictor
from service.deadline import Bounded
from service.direct import Direct
from service.errors import error_response
from service.guard import INFERENCE_PATHS, Guard
from service.monitor import Monitor
from service.openapi import Document
from service.recorder import Recorder
from service.rollout import Decider, route
from service.schemas import (
    EXAMPLE_IMAGE,
    MAX_BATCH,
    BatchResponse,
    InferenceResponse,
    ModelRef,
)
from service.settings import (
    GUARD_OPTIONS,
    SERVICE_CONFIG,
    SETTINGS,
    SPREAD_CONNECTIONS,
    RegistryGarbage,
    configured_tokens,
    settings,
    settle_the_collector,
)
from service.spread import Spread

if TYPE_CHECKING:
    from mindtrace.registry.query import Registry
    from service.watcher import Follower

# A registry that is down must give a quick 503, not MLflow's minutes of retries with backoff (MLflow reads
# these on every call).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", SETTINGS["REGISTRY_TIMEOUT_SECONDS"])
log = logging.getLogger("mindtrace.service")
logs.install()  # BentoML configured the worker's logging before it imported this module
IMAGE_DOC = "base64 PNG, JPEG, BMP or GIF (one frame); a data:image/...;base64, prefix is allowed"
REQUEST = bentoml.Context()  # its ``request`` is the current request's (a context variable)
HOW_TO_TRAIN = (
    "no model is being served yet: train one with `mindtrace train` and import it with "
    "`mindtrace registry import champion` (or POST /retrain), then wait a few seconds or restart the service"
)


@bentoml.service(name="mindtrace", **SERVICE_CONFIG)
class Mindtrace:
    """Classify handwritten digits with the registry's champion model, retrain it, and browse the registry."""

    def __init__(self) -> None:
        # Here, not at the top: only workers load the runtime and the model, and only the leader MLflow.
        from service.watcher import ChampionWatcher, Follower

        self.limits = ImageLimits(max_pixels=SETTINGS.getint("MAX_PIXELS"))
        self.jobs = JobStore(settings["DIR_PATHS"].getpath("JOBS"))
        self.predictor = Predictor(
            SETTINGS.getint("BATCH_MAX_REQUESTS"), SETTINGS.getint("BATCH_MAX_LATENCY_MS")
        )
        self._registry: Registry | None = None
        self._registry_lock = threading.Lock()
        self.recorder, self.monitor = _monitoring(self.predictor, self.retrain)
        # The recorder counts every model call and logs the rollout candidate's shadow predictions.
        self.predictor.observe, self.predictor.shadow_sink = (
            self.recorder.observe,
            self.recorder.record_shadow,
        )
        self.recorder.start()
        # Worker 1 follows the champion in the registry; the others follow it through worker 1 (watcher.py).
        leader = bentoml.server_context.worker_index in (None, 1)
        self.watcher: Follower = (
            ChampionWatcher(self.predictor, settings, lambda: self.registry)
            if leader
            else Follower(self.predictor, settings)
        )
        metrics.start_at_zero(self.watcher.name)
        self.watcher.start()
        if leader:
            self.monitor.start_refresh(settings["MONITORING"].getfloat("REFRESH_SECONDS"))
            Decider(self, settings["ROLLOUT"].getfloat("CHECK_SECONDS")).start()

    @property
    def registry(self) -> Registry:
        """The registry client, every call bounded in time (``service.deadline``); a follower worker loads
        MLflow's client the first time it needs it."""
        with self._registry_lock:  # the watcher's, the decider's and the request threads may all ask first
            if self._registry is None:
                from mindtrace.registry.query import Registry

                seconds = SETTINGS.getfloat("REGISTRY_TIMEOUT_SECONDS")
                tidy = RegistryGarbage(SETTINGS.getint("GC_AFTER_REGISTRY_CALLS"))
                self._registry = cast("Registry", Bounded(Registry(config=settings), seconds, after=tidy))
            return self._registry

    @bentoml.on_startup
    def _settle_the_collector(self) -> None:
        settle_the_collector()  # the modules, MLflow's client and the model are loaded by now

    @bentoml.on_shutdown
    def _flush_the_log(self) -> None:
        self.recorder.stop()  # what is queued is written before the worker exits

    def __is_ready__(self) -> bool:
        return self.predictor.current is not None

    @bentoml.api(route="/inference")
    async def inference(
        self,
        image: Annotated[str, Field(min_length=1, description=IMAGE_DOC, examples=[EXAMPLE_IMAGE])],
    ) -> InferenceResponse:
        """Classify one image of a digit."""
        try:
            pixels = digit_pixels(image, self.limits)[None]
        except ImageRejected as exc:
            return error_response(exc.status, f"image: {exc}")
        answer = await self.classify(pixels, self._headers())
        if isinstance(answer, JSONResponse):
            return answer
        probs, model, ids = answer
        return InferenceResponse(
            label=int(probs[0].argmax()), probabilities=probs[0].tolist(), model=model, prediction_id=ids[0]
        )

    @bentoml.api(route="/inference/batch")
    async def inference_batch(
        self,
        images: Annotated[
            list[Annotated[str, Field(min_length=1)]],
            Field(min_length=1, max_length=MAX_BATCH, description=IMAGE_DOC, examples=[[EXAMPLE_IMAGE]]),
        ],
    ) -> BatchResponse:
        """Classify 1 to 1024 images in one request; one bad image refuses the request and names its index."""
        try:
            pixels = batch_pixels(images, self.limits)
        except ImageRejected as exc:
            return error_response(exc.status, str(exc))
        answer = await self.classify(pixels, self._headers())
        if isinstance(answer, JSONResponse):
            return answer
        probs, model, ids = answer
        # Written directly rather than through 1,024 pydantic objects, by pydantic's serializer (8x faster
        # than json.dumps on 2,560 floats); the shape is BatchResponse's.
        predictions = [
            {"label": label, "probabilities": row, "prediction_id": pid}
            for label, row, pid in zip(probs.argmax(axis=1).tolist(), probs.tolist(), ids, strict=True)
        ]
        body = {"predictions": predictions, "model": model.model_dump()}
        return Response(to_json(body), media_type="application/json")

    def _headers(self) -> Mapping[str, str] | None:
        """The request's headers when a rollout may route by one (a sticky header); else not even read.

        Read from BentoML's request context rather than a ``ctx`` parameter: with one, BentoML answers 200
        whatever the status of a response the API returns (its errors)."""
        rollout = self.predictor.rollout
        return REQUEST.request.headers if rollout is not None and rollout.sticky_header else None

    async def classify(
        self, pixels: np.ndarray, headers: Mapping[str, str] | None = None, version: str | None = None
    ) -> tuple[np.ndarray, ModelRef, list[str]] | JSONResponse:
        """Probabilities for uint8 pixels ``[n, 28, 28]``, the model that computed them and the prediction
        ids (logged in the prediction log), through the batching queue; or the 503 to answer (no model yet,
        or the queue over its latency budget). During a rollout the request is routed by ``headers`` (a
        sticky header) or at random (``service.rollout.route``), unless it names the served ``version``."""
        rollout = self.predictor.rollout
        if version is None:
            canary, shadow = route(rollout, headers)
        else:  # asked for by name (the inference protocol's versions/{version})
            canary, shadow = rollout is not None and version == rollout.candidate, False
        try:
            probs, served = await self.predictor.predict(pixels, candidate=canary)
        except NotServing:
            return error_response(503, HOW_TO_TRAIN)
        except Overloaded as exc:
            return error_response(503, f"{exc}; retry shortly")
        ids, logged = self.recorder.record(pixels, probs, served.name, served.version)
        if rollout is not None:
            role = "canary" if served.version == rollout.candidate else "champion"
            metrics.routed(served.name, served.version, role)
            if shadow and role == "champion":
                if self.predictor.shadow(pixels, probs.argmax(axis=1), "".join(ids) if logged else None):
                    metrics.routed(served.name, rollout.candidate, "shadow")
                else:
                    metrics.shadow_dropped(len(ids))
        return probs, ModelRef(name=served.name, version=served.version), ids

    def move_alias(self, name: str, alias: str, version: str) -> AliasEvent | JSONResponse:
        """Move ``alias``; for the served alias, load the version first and refuse (409) one that fails."""
        watched = alias == self.watcher.alias and self.registry.model_name(name) == self.watcher.name
        served = None
        if watched:
            from service.watcher import load_version

            version = self.registry.get_version(name, version).version  # unknown version: 404
            try:
                served = load_version(self.watcher.name, version, self.registry)
            except RegistryUnavailableError:
                raise
            except Exception as exc:  # noqa: BLE001 - a version that cannot be served must not become champion
                message = f"version {version} of {name} cannot be loaded, so {alias} was not moved: {exc}"
                return error_response(409, message)
        event = self.registry.set_alias(name, alias, version, actor="api")
        if served is not None:
            self.watcher.serve(served, announce=True)
        return event

    def rollback(self, name: str, alias: str) -> AliasEvent:
        """Move ``alias`` back to where it pointed before its last move; the watcher follows."""
        event = self.registry.rollback(name, alias, actor="api")
        self.watcher.wake()
        return event

    def serving_status(self) -> dict[str, Any]:
        current = self.predictor.current
        model = None
        if current is not None:
            model = {
                "name": current.name,
                "version": current.version,
                "bento_tag": current.tag,
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(current.loaded_at)),
            }
        rollout = self.predictor.rollout
        candidate = self.predictor.candidate
        return {
            "model": model,
            "rollout": None
            if rollout is None or candidate is None
            else {
                "id": rollout.id,
                "mode": rollout.mode,
                "percent": rollout.percent,
                "candidate": candidate.version,
            },
            "alias": self.watcher.alias,
            "last_error": self.watcher.last_error,
            "worker_pid": os.getpid(),
        }

    def retrain(self, request: TrainRequest, trigger: str = "api") -> JobState:
        """Start a retraining job (``JobConflict`` while one runs); the watcher follows its promotion."""
        return self.jobs.submit(request, self.job_finished, trigger=trigger)

    def job_finished(self, state: JobState) -> None:
        metrics.job_finished(state.status)
        if state.promoted or state.rollout:
            self.watcher.wake()


def _monitoring(
    predictor: Predictor, retrain: Callable[[TrainRequest, str], JobState]
) -> tuple[Recorder, Monitor]:
    """The worker's recorder (prediction ids, batched log writes) and monitor (feedback, reports, the
    retraining policy)."""
    section = settings["MONITORING"]
    store = PredictionLog(log_path(settings))
    retention = Retention(section.getfloat("MAX_AGE_HOURS") * 3600, section.getint("MAX_ROWS"))
    recorder = Recorder(
        store,
        sample=section.getfloat("SAMPLE"),
        flush_seconds=section.getfloat("FLUSH_SECONDS"),
        max_pending=section.getint("MAX_PENDING"),
        retention=retention,
    )
    model = settings["MLFLOW"]["REGISTERED_MODEL"]
    policy = RetrainPolicy.from_config(settings)
    monitor = Monitor(
        store, recorder, predictor, MonitoringSettings.from_config(settings), model, policy, retrain
    )
    return recorder, monitor


Mindtrace.mount_asgi_app(control.app, path="/")
if SPREAD_CONNECTIONS:  # outermost: it only adds a header now and then
    Mindtrace.add_asgi_middleware(Spread)
Mindtrace.add_asgi_middleware(Guard, **GUARD_OPTIONS)
Mindtrace.add_asgi_middleware(Document, tokens=configured_tokens(), schemas=control.SCHEMAS)
# Innermost of the three: HTTP requests to the inference routes skip BentoML's per-call API layer, and V2
# infer requests the mounted app's routing (direct.py).
Mindtrace.add_asgi_middleware(
    Direct, service=Mindtrace, paths=INFERENCE_PATHS, routes=[(oip.INFER_PATH, oip.answer_infer)]
)
svc = Mindtrace
