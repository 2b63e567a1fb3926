"""Hot-swap: every worker keeps its served model on the version the champion alias points to.

One worker per service (BentoML's worker 1, the *leader*) asks the registry where the alias points every
``SWAP_POLL_SECONDS``. A new version is imported into the BentoML store if it is not there yet, loaded with
ONNX Runtime, tried, swapped in between two batches, and published in a small pointer file under
``MINDTRACE_HOME/serving``, one per server. The other workers (*followers*) of the same server watch that
file and load the version it names from the store. So only the leader holds MLflow's client (about 160 MB); a
follower loads it only if it answers a registry route. The import needs PyTorch to export the ONNX graph, so
it runs as ``mindtrace registry import`` in a child process: no worker ever imports torch.

A running rollout (``mindtrace.rollout``, a tag of the registered model) is followed the same way: the
leader reads it with the alias in one registry call, loads its candidate beside the champion and publishes
both; followers load what the pointer names. When the rollout promotes, the candidate already loaded
becomes the champion without a second load.

A leader also writes what it serves to one record per home (``record_path``). A restarted leader serves what
that record names at once and asks the registry straight after, in the watcher's thread: importing MLflow's
client and opening its store take seconds that readiness need not wait for.

>>> watcher = ChampionWatcher(predictor, Config(), lambda: Registry())   # doctest: +SKIP
>>> watcher.start()                                                      # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mindtrace.config import Config
from mindtrace.registry.bento import bento_model_name, bento_tag, load_serving, store_lock
from mindtrace.registry.errors import NotFoundError, RegistryError, RegistryUnavailableError
from mindtrace.rollout import Rollout, finish
from mindtrace.rollout.state import from_tags
from mindtrace.utils import atomic_write
from service import metrics
from service.batching import Predictor, Served

if TYPE_CHECKING:
    from mindtrace.registry.query import Registry

log = logging.getLogger("mindtrace.service")
IMPORT_TIMEOUT_SECONDS = 600
RETRY_SECONDS = 30  # a version that failed to load is tried again after this long, not at every poll
# How long a follower waits at start-up for its leader to say what it serves (the leader may import first).
LEADER_WAIT_SECONDS = IMPORT_TIMEOUT_SECONDS + 60


class Follower:
    """Keeps ``predictor.current`` on the served version, checking every ``interval`` seconds: a follower
    worker reads the leader's pointer file. A version that fails to load stays out, the old model keeps
    serving, and ``last_error`` says why."""

    leads = False  # whether what this worker swaps in is published for the others

    def __init__(self, predictor: Predictor, settings: Config):
        self.predictor = predictor
        section = settings["SERVICE"]
        self.alias = section["MODEL_ALIAS"]
        self.interval = section.getfloat("SWAP_POLL_SECONDS")
        self.name = settings["MLFLOW"]["REGISTERED_MODEL"]
        self.pointer = pointer_path(settings.home(), bento_model_name(self.name), self.alias)
        self.record = record_path(settings.home(), bento_model_name(self.name), self.alias)
        self.last_error: str | None = None
        self._failed: tuple[str, float] | None = None  # (what, when)
        self._wake = threading.Event()
        self._lock = threading.RLock()  # the watcher thread and alias moves made through the API

    def start(self) -> None:
        """Load the model to serve now, then keep following in a background thread.

        A follower first waits until this server's leader has published what it serves, so that it starts
        accepting requests with the same model (the leader publishes as soon as it has loaded, or found
        nothing to load).
        """
        self._await_leader()
        resumed = self._resume()
        if not resumed:
            self.check()
        if self.predictor.current is None:
            self._serve_newest_in_store()
        if self.leads:
            prune_pointers(self.pointer.parent)
            if self.predictor.current is None:
                self._publish()  # a swap publishes what it serves; nothing served is news too
        if resumed:
            self._wake.set()  # the registry's word at once, in the background
        threading.Thread(target=self._loop, name="champion-watcher", daemon=True).start()

    def _resume(self) -> bool:
        """Serve what this home served last before the registry is asked; a follower never does (it
        serves what its own leader names)."""
        return False

    def _await_leader(self) -> None:
        server, deadline = os.getppid(), time.monotonic() + LEADER_WAIT_SECONDS
        while not self.leads and time.monotonic() < deadline:
            if self.pointer.exists():  # this server's own pointer: only its leader writes it
                return
            if os.getppid() != server:  # the server stopped while this worker was starting: stop too
                raise RuntimeError("the server stopped before its leader worker said what it serves")
            time.sleep(0.2)

    def wake(self) -> None:
        """Check now rather than at the next tick (after an alias move made through this service)."""
        self._wake.set()

    def check(self) -> None:
        """One look at the target; swap when it names another version than the served one, and follow the
        rollout it names (or its end)."""
        with self._lock:
            try:
                target = self._target()
            except RegistryError as exc:
                self._note_error(f"cannot read the registry: {exc}", swap=False)
                return
            if target is None:
                return
            if not self._serving(target) and not self._swap(target):
                return
            self._follow_rollout(target.get("rollout"))

    def _swap(self, target: dict[str, Any]) -> bool:
        """Serve ``target`` as the champion (the candidate itself when a rollout promoted it); False when
        it failed to load."""
        candidate = self.predictor.candidate
        if candidate is not None and candidate.version == target["version"]:
            self.serve(candidate, announce=self.leads)
            return True
        key = json.dumps({k: target.get(k) for k in ("version", "tag")}, sort_keys=True)
        if self._failed_lately(key):
            return False
        try:
            self.serve(self._load(target), announce=self.leads)
        except RegistryUnavailableError as exc:  # not the version's fault: tried again at the next look
            self._note_error(f"cannot read the registry: {exc}", swap=False)
            return False
        except Exception as exc:  # noqa: BLE001 - any failure to load leaves the old model serving
            self._failed = (key, time.monotonic())
            what = f"version {target['version']} of {self.name}"
            self._note_error(f"{what} was not swapped in: {exc}", swap=True)
            return False
        return True

    def _follow_rollout(self, spec: dict[str, Any] | None) -> None:
        """Load the candidate of the running rollout ``spec`` beside the champion; drop it when none runs."""
        predictor = self.predictor
        if spec is None:
            if predictor.rollout is not None:
                self.end_rollout(announce=self.leads)
            return
        rollout = Rollout.model_validate(spec)
        candidate = predictor.candidate
        if predictor.rollout == rollout and candidate is not None and candidate.version == rollout.candidate:
            return
        key = f"rollout {rollout.id}"
        if self._failed_lately(key):
            return
        try:
            loaded = candidate if candidate and candidate.version == rollout.candidate else None
            served = self._load_candidate(spec, loaded)
        except RegistryUnavailableError as exc:  # not the candidate's fault: tried again at the next look
            self._note_error(f"cannot read the registry: {exc}", swap=False)
            return
        except Exception as exc:  # noqa: BLE001 - a version gone or unloadable: the champion alone serves
            self._failed = (key, time.monotonic())
            what = f"candidate version {rollout.candidate} of {self.name}"
            self._note_error(f"{what} was not loaded: {exc}", swap=True)
            self._unloadable(rollout, str(exc))
            return
        self.start_rollout(served, rollout, announce=self.leads)

    def _failed_lately(self, key: str) -> bool:
        """Whether loading ``key`` failed less than ``RETRY_SECONDS`` ago (not tried again at every poll)."""
        return bool(
            self._failed and self._failed[0] == key and time.monotonic() - self._failed[1] < RETRY_SECONDS
        )

    def _unloadable(self, rollout: Rollout, why: str) -> None:
        """A candidate that cannot be loaded: the leader ends its rollout (followers wait for the leader)."""

    def _load_candidate(self, spec: dict[str, Any], loaded: Served | None) -> Served:
        return loaded or _tried(spec["candidate_tag"], self.name, spec["candidate"])

    def serve(self, served: Served, announce: bool = False) -> Served:
        """Swap in a model that is already loaded and checked; ``announce`` it to the other workers too (the
        leader's swaps, and an alias move made through this worker)."""
        with self._lock:
            previous = self.predictor.current
            self.predictor.current = served
            self.last_error, self._failed = None, None
            if announce:
                self._publish()
        metrics.model_swapped(previous, served)
        log.info("now serving %s version %s (%s)", served.name, served.version, served.tag)
        return served

    def start_rollout(self, candidate: Served, rollout: Rollout, announce: bool = False) -> None:
        """Serve ``candidate`` beside the champion as ``rollout`` says (loaded and checked already)."""
        with self._lock:
            self.predictor.candidate = candidate
            self.predictor.rollout = rollout
            self.last_error, self._failed = None, None
            if announce:
                self._publish(rollout_only=True)
        metrics.rollout_serving(rollout, serving=True)
        log.info(
            "rollout %s: version %s serves as the %s candidate (%g %%)",
            rollout.id, candidate.version, rollout.mode, rollout.percent,
        )  # fmt: skip

    def end_rollout(self, announce: bool = False) -> None:
        """Take the candidate out: the champion alone serves."""
        with self._lock:
            rollout = self.predictor.rollout
            self.predictor.rollout = None
            self.predictor.candidate = None
            if announce:
                self._publish(rollout_only=True)
        if rollout is not None:
            metrics.rollout_serving(rollout, serving=False)
            log.info("rollout %s: the candidate left, the champion alone serves", rollout.id)

    def _publish(self, rollout_only: bool = False) -> None:
        """Write what this worker serves to the pointer. A follower that changes only the rollout (an API
        call it answered) keeps the champion that the pointer names: it may not have swapped yet to what its
        leader published last, and writing back its older champion would send every follower back to it."""
        champion = champion_fields(self.predictor.current)
        if rollout_only and not self.leads:
            published = self._published()
            if published.get("tag"):
                champion = {key: published[key] for key in champion}
        for path in (self.pointer, self.record) if self.leads else (self.pointer,):
            publish(path, champion, self.predictor.candidate, self.predictor.rollout)

    def _target(self) -> dict[str, Any] | None:
        """The version to serve as the leader published it (name, version, BentoML tag, the rollout with
        its candidate's tag); None if none is."""
        published = self._published()
        return published if published.get("tag") else None

    def _published(self, path: Path | None = None) -> dict[str, Any]:
        try:
            return json.loads((path or self.pointer).read_text())
        except (OSError, ValueError):
            return {}  # not published yet; atomic writes mean a file is never seen half-written

    def _serving(self, target: dict[str, Any]) -> bool:
        current = self.predictor.current
        return current is not None and current.tag == target["tag"]

    def _load(self, target: dict[str, Any]) -> Served:
        return _tried(target["tag"], self.name, target["version"])

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
        from bentoml.exceptions import BentoMLException, NotFound

        try:
            imports = bentoml.models.list(bento_model_name(self.name))
        except NotFound:
            imports = []
        except BentoMLException as exc:  # an entry half-copied by a process that was killed: none is listed
            log.warning("cannot list the BentoML store (%s); `mindtrace registry import` replaces it", exc)
            imports = []
        for model in sorted(imports, key=lambda m: m.info.creation_time, reverse=True):
            version = str(model.info.metadata.get("mlflow", {}).get("version", "?"))
            try:
                served = _tried(model, self.name, version)
            except ValueError as exc:
                log.warning("skipping %s: %s", model.tag, exc)
                continue
            self.serve(served, announce=self.leads)
            log.warning(
                "no %s found for %s; serving %s from the BentoML store", self.alias, self.name, model.tag
            )
            return
        log.warning("no model to serve: no %s for %s and none in the BentoML store", self.alias, self.name)

    def _note_error(self, message: str, swap: bool) -> None:
        if message != self.last_error:
            log.error(message)
        self.last_error = message
        if swap:
            metrics.swap_failed()


class ChampionWatcher(Follower):
    """The leader: follows the alias in the registry itself, and publishes what it serves for the others."""

    leads = True

    def __init__(self, predictor: Predictor, settings: Config, registry: Callable[[], Registry]):
        super().__init__(predictor, settings)
        self._registry = registry
        self.settings = settings
        self.resume = settings["SERVICE"].getboolean("START_WITH_LAST_SERVED")

    @property
    def registry(self) -> Registry:
        """The registry client, made at its first use: after a resumed start, in the watcher's thread."""
        return self._registry()

    def _resume(self) -> bool:
        """Serve what this home's servers served last (the record), champion and rollout candidate, from
        the BentoML store. MLflow's client takes seconds to import and open the registry; the watcher's
        first look, straight after, swaps if the alias moved while no server ran."""
        last = self._published(self.record)
        if not self.resume or not last.get("tag"):
            return False
        spec = last.get("rollout")
        try:
            with store_lock(self.settings, shared=True):
                champion = _tried(last["tag"], self.name, last["version"])
                candidate = _tried(spec["candidate_tag"], self.name, spec["candidate"]) if spec else None
        except Exception as exc:  # noqa: BLE001 - the registry decides instead, as at a first start
            what = f"version {last['version']} served last"
            log.warning("cannot start with %s (%s); asking the registry", what, exc)
            return False
        self.serve(champion, announce=True)
        if candidate:
            self.start_rollout(candidate, Rollout.model_validate(spec), announce=True)
        log.info("started with what was served last; asking the registry where %s points", self.alias)
        return True

    def _target(self) -> dict[str, Any] | None:
        try:
            version, tags = self.registry.alias_and_tags(self.name, self.alias)
        except NotFoundError:
            return None  # nothing registered yet
        if version is None:
            return None
        rollout = from_tags(tags)
        return {
            "version": version,
            "rollout": rollout.model_dump(mode="json") if rollout and rollout.running else None,
        }

    def _serving(self, target: dict[str, Any]) -> bool:
        current = self.predictor.current
        return current is not None and current.version == target["version"]

    def _load(self, target: dict[str, Any]) -> Served:
        return load_version(self.name, target["version"], self.registry)

    def _load_candidate(self, spec: dict[str, Any], loaded: Served | None) -> Served:
        return loaded or load_version(self.name, spec["candidate"], self.registry)

    def _unloadable(self, rollout: Rollout, why: str) -> None:
        reason = f"the candidate cannot be loaded: {why}"
        _, ended = finish(self.registry, self.name, rollout.id, "rolled-back", reason, actor="mindtrace")
        if ended:
            metrics.rollout_decided(self.name, "rolled-back")
            log.error("rollout %s rolled back: %s", rollout.id, reason)


def pointer_path(home: Path, model: str, alias: str) -> Path:
    """The pointer of this worker's server: ``serving/<model>.<alias>/<host>-<server pid>-<its start>.json``.

    One file per ``bentoml serve`` process, so that a follower starting up waits for its own leader's word,
    never for a file left by an earlier run (a restarted container reuses pids, hence the start time) or
    written by another server sharing ``MINDTRACE_HOME`` (a replica, or the benchmark's twin servers).
    """
    server = os.getppid()  # workers are children of the server's supervising process
    try:  # its start time in clock ticks since boot (Linux); elsewhere the pid alone names the server
        started = Path(f"/proc/{server}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = "0"
    return home / "serving" / f"{model}.{alias}" / f"{socket.gethostname()}-{server}-{started}.json"


def record_path(home: Path, model: str, alias: str) -> Path:
    """What this home's servers served last: ``serving/<model>.<alias>.json``, beside the pointers' folder.

    Every leader writes it with its pointer; a starting leader serves what it names before it asks the
    registry (``[SERVICE] START_WITH_LAST_SERVED``).

    >>> record_path(Path("/srv/mt"), "mnist-mlp", "champion")
    PosixPath('/srv/mt/serving/mnist-mlp.champion.json')
    """
    return home / "serving" / f"{model}.{alias}.json"


def prune_pointers(folder: Path) -> None:
    """Remove the pointers of this host's servers that are gone (a leader does it at start-up)."""
    host = socket.gethostname()
    for path in folder.glob(f"{host}-*.json"):
        pid = int(path.stem.rsplit("-", 2)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except PermissionError:
            pass  # alive, and someone else's


def publish(
    pointer: Path,
    champion: dict[str, Any],
    candidate: Served | None = None,
    rollout: Rollout | None = None,
) -> None:
    """Write the ``champion_fields`` of what is served to ``pointer``, atomically: never seen half-written.
    A running rollout goes with it, its candidate's BentoML tag added."""
    body: dict[str, Any] = {**champion, "rollout": None}
    if candidate is not None and rollout is not None:
        body["rollout"] = {**rollout.model_dump(mode="json"), "candidate_tag": candidate.tag}
    with atomic_write(pointer) as tmp:
        tmp.write_text(json.dumps(body))


def champion_fields(served: Served | None) -> dict[str, Any]:
    """What the pointer says of a champion: its name, version and BentoML tag.

    >>> champion_fields(None)
    {'name': None, 'version': None, 'tag': None}
    """
    return {
        "name": served.name if served else None,
        "version": served.version if served else None,
        "tag": served.tag if served else None,
    }


def load_version(name: str, version: str, registry: Registry) -> Served:
    """Load registered ``version`` from the BentoML store, importing it first when it is not there yet."""
    from bentoml.exceptions import NotFound

    try:
        return load_stored(name, version, registry)
    except (NotFound, ValueError):
        pass  # not imported yet, or an import this worker cannot use: import (again) and retry
    _import(name, version)
    return load_stored(name, version, registry)


def load_stored(name: str, version: str, registry: Registry) -> Served:
    """Load registered ``version`` from the BentoML store as it is; BentoML's ``NotFound`` when it was never
    imported, ``ValueError`` when its entry cannot serve. An import in progress (a retraining job's) is
    waited for, never read half-copied."""
    tag = bento_tag(registry.get_version(name, version))
    with store_lock(registry.config, shared=True):
        return _tried(tag, name, version)


def _import(name: str, version: str) -> None:
    """``mindtrace registry import`` in a child process: PyTorch is loaded there, never in the worker."""
    command = [sys.executable, "-m", "mindtrace.cli", "registry", "import", version, "--model", name]
    done = subprocess.run(command, capture_output=True, text=True, timeout=IMPORT_TIMEOUT_SECONDS)
    if done.returncode != 0:
        lines = (done.stdout + done.stderr).strip().splitlines() or [f"exit status {done.returncode}"]
        reason = next((line for line in reversed(lines) if line.startswith("error")), lines[-1])
        raise RuntimeError(f"importing it failed: {reason}")


def _tried(model: Any, name: str, version: str) -> Served:
    """The store entry ``model`` (a tag or a model) loaded with ONNX Runtime, once it answers sanely, with
    its drift reference."""
    classify, reference, entry = load_serving(model)
    probs = classify(np.zeros((2, 28, 28), dtype=np.uint8))
    if probs.shape != (2, 10) or not np.isfinite(probs).all():
        raise ValueError(f"{entry.tag} does not produce 10 finite probabilities per image")
    return Served(classify, name, version, str(entry.tag), time.time(), reference)
