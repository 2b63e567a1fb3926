"""Hot-swap: a watcher that keeps the served model on the version the champion alias points to.

Every worker asks the registry where the alias points every ``SWAP_POLL_SECONDS``. A new version is imported
into the BentoML store (once, by whichever worker gets there first), loaded with ONNX Runtime, tried, and only
then swapped in between two batches. The import needs PyTorch to export the ONNX graph, so it runs as
``mindtrace registry import`` in a child process: the worker itself never imports torch.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time

import numpy as np

from mindtrace.config import Config
from mindtrace.registry.bento import bento_model_name, bento_tag, load_classifier
from mindtrace.registry.errors import NotFoundError, RegistryError
from mindtrace.registry.query import Registry
from service import metrics
from service.batching import Predictor, Served

log = logging.getLogger("mindtrace.service")
IMPORT_TIMEOUT_SECONDS = 600


class ChampionWatcher:
    """Keeps ``predictor.current`` on the version the alias points to, checking every ``interval`` seconds.

    A version is imported into the BentoML store, loaded and tried on a blank image before it is swapped in;
    one that fails stays out, the old model keeps serving, and ``last_error`` says why.
    """

    def __init__(self, predictor: Predictor, settings: Config):
        self.predictor = predictor
        section = settings["SERVICE"]
        self.alias = section["MODEL_ALIAS"]
        self.interval = section.getfloat("SWAP_POLL_SECONDS")
        self.registry = Registry(config=settings)
        self.name = self.registry.model_name(None)
        self.last_error: str | None = None
        self._failed: tuple[str, float] | None = None  # (version, when): retried after a while, not each poll
        self._wake = threading.Event()
        self._lock = threading.RLock()  # the watcher thread and alias moves made through the API

    def start(self) -> None:
        """Load the model to serve now, then keep following the alias in a background thread."""
        self.check()
        if self.predictor.current is None:
            self._serve_newest_in_store()
        threading.Thread(target=self._loop, name="champion-watcher", daemon=True).start()

    def wake(self) -> None:
        """Check now rather than at the next tick (after an alias move made through this service)."""
        self._wake.set()

    def check(self) -> None:
        """One look at the alias; swap when it points to a version other than the served one."""
        with self._lock:
            try:
                version = self.registry.alias_target(self.name, self.alias)
            except NotFoundError:
                version = None  # nothing registered yet
            except RegistryError as exc:
                self._note_error(f"cannot read the registry: {exc}", swap=False)
                return
            current = self.predictor.current
            if version is None or (current is not None and current.version == version):
                return
            if self._failed and self._failed[0] == version and time.monotonic() - self._failed[1] < 30:
                return
            try:
                self.swap_to(version)
            except Exception as exc:  # noqa: BLE001 - any failure to load leaves the old model serving
                self._failed = (version, time.monotonic())
                self._note_error(f"version {version} of {self.name} was not swapped in: {exc}", swap=True)

    def swap_to(self, version: str) -> Served:
        """Import, load, try and serve ``version``; on any failure, raise and leave the served model alone."""
        return self.serve(load_version(self.name, version, self.registry))

    def serve(self, served: Served) -> Served:
        """Swap in a model that is already loaded and checked."""
        with self._lock:
            previous = self.predictor.current
            self.predictor.current = served
            self.last_error, self._failed = None, None
        metrics.model_swapped(previous, served)
        log.info("now serving %s version %s (%s)", served.name, served.version, served.tag)
        return served

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bad check
                log.exception("checking the %s alias failed", self.alias)

    def _serve_newest_in_store(self) -> None:
        """With no champion to be found, serve the newest import of this model (e.g. inside a Bento)."""
        import bentoml
        from bentoml.exceptions import NotFound

        try:
            imports = bentoml.models.list(bento_model_name(self.name))
        except NotFound:
            imports = []
        for model in sorted(imports, key=lambda m: m.info.creation_time, reverse=True):
            version = str(model.info.metadata.get("mlflow", {}).get("version", "?"))
            try:
                self.predictor.current = _tried(model, self.name, version)
            except ValueError as exc:
                log.warning("skipping %s: %s", model.tag, exc)
                continue
            metrics.model_swapped(None, self.predictor.current)
            log.warning(
                "registry has no %s for %s; serving %s from the BentoML store",
                self.alias,
                self.name,
                model.tag,
            )
            return
        log.warning(
            "no model to serve: the registry has no %s for %s and the BentoML store has none",
            self.alias,
            self.name,
        )

    def _note_error(self, message: str, swap: bool) -> None:
        if message != self.last_error:
            log.error(message)
        self.last_error = message
        if swap:
            metrics.swap_failed()


def load_version(name: str, version: str, registry: Registry) -> Served:
    """Load registered ``version`` from the BentoML store, importing it first when it is not there yet."""
    from bentoml.exceptions import NotFound

    tag = bento_tag(registry.get_version(name, version))
    try:
        return _tried(tag, name, version)
    except (NotFound, ValueError):
        pass  # not imported yet, or an import this worker cannot use: import (again) and retry
    _import(name, version)
    return _tried(tag, name, version)


def _import(name: str, version: str) -> None:
    """``mindtrace registry import`` in a child process: PyTorch is loaded there, never in the worker."""
    command = [sys.executable, "-m", "mindtrace.cli", "registry", "import", version, "--model", name]
    done = subprocess.run(command, capture_output=True, text=True, timeout=IMPORT_TIMEOUT_SECONDS)
    if done.returncode != 0:
        lines = (done.stdout + done.stderr).strip().splitlines() or [f"exit status {done.returncode}"]
        reason = next((line for line in reversed(lines) if line.startswith("error")), lines[-1])
        raise RuntimeError(f"importing it failed: {reason}")


def _tried(model, name: str, version: str) -> Served:
    """The store entry ``model`` (a tag or a model) loaded with ONNX Runtime, once it answers sanely."""
    classify, entry = load_classifier(model)
    probs = classify(np.zeros((2, 28, 28), dtype=np.uint8))
    if probs.shape != (2, 10) or not np.isfinite(probs).all():
        raise ValueError(f"{entry.tag} does not produce 10 finite probabilities per image")
    return Served(classify, name, version, str(entry.tag), time.time())
