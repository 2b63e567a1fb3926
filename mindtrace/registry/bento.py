"""Import a registered MLflow model version into the BentoML model store, and load it back for serving.

The BentoML model holds three files: the MLP's weights as a plain ``state_dict`` (read back with
``weights_only=True``, so loading runs no pickled code), the serving graph exported to ONNX (uint8 pixels
in, probabilities out), and the version's drift reference (``mindtrace.monitoring.drift``), copied from its
MLflow run (or made and recorded there first, for a version registered before references were). The ONNX
graph may enter the store only after its outputs equal PyTorch's to 1e-5 on 1,000 real MNIST test digits.
Labels and metadata hold the MLflow name, version and run id, the test metrics, the training parameters,
the preprocessing spec, each file's sha256 and that check's figures. The tag is
derived from the registered version and its run, so importing the same version twice finds the first import.
DESIGN.md explains why this beats ``bentoml.mlflow.import_model`` for serving.

Importing needs PyTorch (to read the MLflow model and export it); loading for serving (``load_classifier``)
needs only ONNX Runtime, so the service's workers never import torch.

>>> result = import_version("champion")                 # doctest: +SKIP
>>> result.tag, result.created                          # doctest: +SKIP
('mnist-mlp:v3-1f2e3d4c', True)
>>> classify, model = load_classifier(result.tag)       # doctest: +SKIP
>>> load_reference(model).description                   # doctest: +SKIP
'MNIST test set (10000 digits)'
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from pydantic import BaseModel

from mindtrace.config import Config
from mindtrace.faults import failpoint
from mindtrace.monitoring.drift import REFERENCE_FILE, Reference
from mindtrace.preprocess import SPEC
from mindtrace.registry.schemas import VersionInfo
from mindtrace.utils import exclusive_lock, shared_lock

if TYPE_CHECKING:
    from mindtrace.models.net import MLPNet
    from mindtrace.registry.query import Registry
    from mindtrace.runtime import OnnxClassifier

WEIGHTS_FILE = "weights.pt"
ONNX_FILE = "model.onnx"
# Every file of an entry, with the metadata key of its sha256.
FILES = {WEIGHTS_FILE: "weights_sha256", ONNX_FILE: "onnx_sha256", REFERENCE_FILE: "reference_sha256"}
# The ONNX graph must give PyTorch's probabilities to within this, on this many real test digits.
RUNTIME_TOLERANCE = 1e-5
RUNTIME_CHECK_DIGITS = 1000


class BentoImport(BaseModel):
    """The outcome of an import: the BentoML tag, and whether this call created it."""

    tag: str
    created: bool
    name: str
    version: str
    run_id: str | None
    path: str


def bento_tag(info: VersionInfo) -> str:
    """The BentoML tag for a registered version: ``<name>:v<version>-<run id prefix>``.

    The run id makes the tag unique across tracking servers that each have a version 3.

    >>> from datetime import datetime
    >>> t = datetime(2026, 1, 1)
    >>> bento_tag(VersionInfo(name="MNIST MLP", version="3", aliases=[], status="READY", created_at=t,
    ...                       updated_at=t, tags={}, run_id="1f2e3d4c5b6a"))
    'mnist-mlp:v3-1f2e3d4c'
    """
    return f"{bento_model_name(info.name)}:v{info.version}-{(info.run_id or 'norun')[:8]}"


def bento_model_name(registered: str) -> str:
    """The BentoML model name that the imports of registered model ``registered`` share.

    >>> bento_model_name("MNIST MLP")
    'mnist-mlp'
    """
    return re.sub(r"[^a-z0-9._-]+", "-", registered.lower()).strip("-._")[:50] or "model"


def import_version(
    ref: str | int = "champion",
    name: str | None = None,
    registry: Registry | None = None,
    config: Config | None = None,
) -> BentoImport:
    """Save registered version ``ref`` (number or alias) of ``name`` into the BentoML store, once.

    A store entry that is already there and intact is returned as it is (``created=False``); one whose files
    do not match their digests (a crash mid-copy) or that has no ONNX graph (an older import) is replaced.
    Concurrent imports wait for each other. Raises ValueError when the exported graph fails its check.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    from mindtrace.registry.query import Registry  # MLflow: imports need it, serving a stored model not

    registry = registry or Registry(config=config)
    info = registry.get_version(name, ref)
    tag = bento_tag(info)
    with store_lock(registry.config):
        try:
            existing, _ = _files(tag)
            return _result(tag, False, info, existing.path)
        except NotFound:
            pass
        except ValueError:
            bentoml.models.delete(tag)  # damaged, half-copied, or from before a file it needs: import again

        net, info = registry.load_module(info.name, info.version)
        weights, graph, check = _serving_files(net, registry.config, f"version {info.version} of {info.name}")
        reference = _reference(registry, info, net).to_bytes()
        labels = {
            "source": "mindtrace",
            "mlflow-model": tag.split(":")[0],
            "mlflow-version": info.version,
            "mlflow-run-id": info.run_id or "",
        }
        metadata = {
            "mlflow": {
                "name": info.name,
                "version": info.version,
                "run_id": info.run_id,
                "source": info.artifacts.get("model"),
                "tracking_uri": _without_credentials(registry.tracking_uri),
                "registered_at": info.created_at.isoformat(),
            },
            "metrics": {k: v for k, v in info.metrics.items() if k.startswith("test_")},
            "params": {k: v for k, v in info.params.items() if k.startswith(("train.", "model."))},
            "preprocessing": SPEC,
            "dim": net.dim,
            "weights_sha256": hashlib.sha256(weights).hexdigest(),
            "onnx_sha256": hashlib.sha256(graph).hexdigest(),
            "reference_sha256": hashlib.sha256(reference).hexdigest(),
            "runtime_check": check,
            "imported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        # BentoML builds the entry in a temporary folder and moves it into the store only on success.
        try:
            with bentoml.models.create(tag, labels=labels, metadata=metadata) as model:
                Path(model.path_of(WEIGHTS_FILE)).write_bytes(weights)
                failpoint("import")
                Path(model.path_of(ONNX_FILE)).write_bytes(graph)
                Path(model.path_of(REFERENCE_FILE)).write_bytes(reference)
        except OSError as exc:  # a full disk, a read-only store; BentoML has removed what it copied
            raise StoreWriteError(f"could not write {tag} into the BentoML store: {_why(exc)}") from exc
        return _result(tag, True, info, bentoml.models.get(tag).path)


def store_lock(config: Config, shared: bool = False) -> AbstractContextManager[None]:
    """The lock that imports into the BentoML store hold exclusively, and readers shared.

    BentoML adds an entry to its store by making the entry's folder and then copying the files in, so a
    reader beside an import could meet an entry half-copied: taken for a damaged one, or unreadable.

    >>> with store_lock(Config(), shared=True):    # doctest: +SKIP
    ...     classify, reference, model = load_serving("mnist-mlp:v3-1f2e3d4c")
    """
    path = config.home() / "locks" / "bentoml-import.lock"
    what = "an import into the BentoML store"
    return shared_lock(path, what) if shared else exclusive_lock(path, what)


def _serving_files(net: MLPNet, config: Config, what: str) -> tuple[bytes, bytes, dict[str, Any]]:
    """The weights and the ONNX graph of ``net``, once the graph is shown to compute what ``net`` computes."""
    import torch

    from mindtrace.data.digits import mnist_test_pixels
    from mindtrace.models.net import onnx_bytes, probabilities
    from mindtrace.runtime import OnnxClassifier

    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    graph = onnx_bytes(net)
    pixels, _ = mnist_test_pixels(RUNTIME_CHECK_DIGITS, config=config)
    expected, served = probabilities(net, pixels), OnnxClassifier(graph)(pixels)
    worst = float(np.abs(expected - served).max())
    if not worst <= RUNTIME_TOLERANCE:  # NaN fails too
        raise ValueError(
            f"the ONNX graph of {what} differs from the PyTorch model by {worst:.2e} on {len(pixels)} MNIST "
            f"test digits (tolerance {RUNTIME_TOLERANCE:g}); it was not imported"
        )
    same_labels = int((expected.argmax(1) == served.argmax(1)).sum())
    return (
        buffer.getvalue(),
        graph,
        {"digits": len(pixels), "max_abs_diff": worst, "same_labels": same_labels},
    )


def _reference(registry: Registry, info: VersionInfo, net: MLPNet) -> Reference:
    """The version's drift reference from its run; made from ``net`` and recorded in the run when missing."""
    import tempfile

    from mindtrace.monitoring.drift import build_reference
    from mindtrace.registry.artifacts import log_reference

    if "reference" in info.artifacts:
        with tempfile.TemporaryDirectory(prefix="mindtrace-reference-") as tmp:
            return Reference.from_bytes(registry.download_artifact(info, "reference", Path(tmp)).read_bytes())
    reference = build_reference(net, registry.config)
    if info.run_id:
        log_reference(registry.client, info.run_id, reference)
    return reference


def load_classifier(model_or_tag: Any) -> tuple[OnnxClassifier, Any]:
    """The ONNX Runtime classifier of a BentoML model made by :func:`import_version`, and the model.

    No PyTorch is imported. Raises ValueError when the entry is not such a model or a file does not match
    its recorded digest.
    """
    classify, _, model = load_serving(model_or_tag)
    return classify, model


def load_serving(model_or_tag: Any) -> tuple[OnnxClassifier, Reference, Any]:
    """What the service serves from a store entry, its files read and checked once: the ONNX Runtime
    classifier, the drift reference, and the model."""
    from mindtrace.runtime import OnnxClassifier

    model, files = _files(model_or_tag)
    return OnnxClassifier(files[ONNX_FILE]), Reference.from_bytes(files[REFERENCE_FILE]), model


def load_reference(model_or_tag: Any) -> Reference:
    """The drift reference of a BentoML model made by :func:`import_version`.

    Raises ValueError when the entry is not such a model or a file does not match its recorded digest.
    """
    _, files = _files(model_or_tag)
    return Reference.from_bytes(files[REFERENCE_FILE])


def load_bento_mlp(model_or_tag: Any) -> tuple[MLPNet, Any]:
    """The eval-mode PyTorch ``MLPNet`` of a BentoML model made by :func:`import_version`, and the model.

    Raises ValueError when the entry is not such a model or a file does not match its recorded digest.
    """
    import torch

    from mindtrace.models.net import rebuild

    model, files = _files(model_or_tag)
    state = torch.load(io.BytesIO(files[WEIGHTS_FILE]), map_location="cpu", weights_only=True)
    return rebuild(state, model.info.metadata["dim"]), model


def _files(model_or_tag: Any) -> tuple[Any, dict[str, bytes]]:
    """A store entry and its files' bytes, each checked against the sha256 recorded at import.

    Raises BentoML's NotFound for no entry, ValueError for one that cannot be read or is damaged (a process
    killed while BentoML copied it into the store leaves a folder without its ``model.yaml``).
    """
    import bentoml
    from bentoml.exceptions import NotFound

    model = model_or_tag
    if isinstance(model_or_tag, str):
        try:
            model = bentoml.models.get(model_or_tag)
        except NotFound:
            raise
        except Exception as exc:  # noqa: BLE001 - BentoMLException, or YAML's own for a truncated model.yaml
            raise ValueError(f"{model_or_tag} is damaged: {exc}") from None
    metadata = model.info.metadata
    files = {}
    for name, key in FILES.items():
        path = Path(model.path_of(name))
        if "dim" not in metadata or key not in metadata or not path.is_file():
            raise ValueError(
                f"{model.tag} is not a mindtrace model, or one imported before it had {name}: "
                f"{name} or its digest is missing"
            )
        files[name] = path.read_bytes()
        if hashlib.sha256(files[name]).hexdigest() != metadata[key]:
            raise ValueError(f"{model.tag} is damaged: its {name} does not match its recorded sha256")
    return model, files


class StoreWriteError(OSError):
    """An import could not be written into the BentoML store (a full disk, a read-only folder)."""


def _why(exc: OSError) -> str:
    """An OS error in a line: ``shutil.copytree`` gathers one per file into a list; the first says it.

    >>> import shutil
    >>> _why(shutil.Error([("a", "b", "[Errno 28] No space left on device: 'a' -> 'b'")]))
    "[Errno 28] No space left on device: 'a' -> 'b'"
    """
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        return str(exc.args[0][0][-1])
    return str(exc)


def _result(tag: str, created: bool, info: VersionInfo, path: str) -> BentoImport:
    return BentoImport(
        tag=tag, created=created, name=info.name, version=info.version, run_id=info.run_id, path=str(path)
    )


def _without_credentials(uri: str) -> str:
    """A tracking URI fit to store: ``https://user:secret@host`` loses its user and secret."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))
    return uri
