"""Import a registered MLflow model version into the BentoML model store, and load it back for serving.

The BentoML model holds the MLP's weights as a plain ``state_dict`` (read back with ``weights_only=True``, so
loading runs no pickled code), its layer sizes, and in labels and metadata the MLflow name, version and run
id, the test metrics, the training parameters and the preprocessing spec. Its tag is derived from the
registered version and its run, so importing the same version twice finds the first import instead of
making a copy. DESIGN.md explains why this beats ``bentoml.mlflow.import_model`` for serving.

>>> result = import_version("champion")                 # doctest: +SKIP
>>> result.tag, result.created                          # doctest: +SKIP
('mnist-mlp:v3-1f2e3d4c', True)
>>> net, model = load_bento_mlp(result.tag)             # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import re
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import torch
from pydantic import BaseModel

from mindtrace.config import Config
from mindtrace.models import MLPNet
from mindtrace.preprocess import SPEC
from mindtrace.registry.query import Registry
from mindtrace.registry.schemas import VersionInfo
from mindtrace.utils import exclusive_lock, ifnone

WEIGHTS_FILE = "weights.pt"


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

    A store entry that is already there and intact is returned as it is (``created=False``); one whose weights
    do not match their recorded digest (a crash mid-copy) is replaced. Concurrent imports wait for each other.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    registry = ifnone(registry, Registry(config=config))
    info = registry.get_version(name, ref)
    tag = bento_tag(info)
    lock = registry.config["DIR_PATHS"].getpath("HOME") / "locks" / "bentoml-import.lock"
    with exclusive_lock(lock, f"another process is importing into the BentoML store ({tag})"):
        try:
            existing = bentoml.models.get(tag)
        except NotFound:
            existing = None
        if existing is not None:
            try:
                load_bento_mlp(existing)
                return _result(tag, False, info, existing.path)
            except ValueError:
                bentoml.models.delete(tag)  # damaged: import it again

        net, info = registry.load_module(info.name, info.version)
        buffer = io.BytesIO()
        torch.save(net.state_dict(), buffer)
        weights = buffer.getvalue()
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
            "imported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        # BentoML builds the entry in a temporary folder and moves it into the store only on success.
        with bentoml.models.create(tag, labels=labels, metadata=metadata) as model:
            Path(model.path_of(WEIGHTS_FILE)).write_bytes(weights)
        return _result(tag, True, info, bentoml.models.get(tag).path)


def load_bento_mlp(model_or_tag) -> tuple[MLPNet, object]:
    """The eval-mode ``MLPNet`` of a BentoML model made by :func:`import_version`, and the model.

    Raises ValueError when the entry is not such a model or its weights do not match their digest.
    """
    import bentoml

    model = bentoml.models.get(model_or_tag) if isinstance(model_or_tag, str) else model_or_tag
    metadata = model.info.metadata
    path = Path(model.path_of(WEIGHTS_FILE))
    if "dim" not in metadata or "weights_sha256" not in metadata or not path.is_file():
        raise ValueError(f"{model.tag} is not a mindtrace MLP (no layer sizes, digest or weights file)")
    weights = path.read_bytes()
    if hashlib.sha256(weights).hexdigest() != metadata["weights_sha256"]:
        raise ValueError(f"{model.tag} is damaged: its weights do not match their recorded sha256")
    net = MLPNet(metadata["dim"])
    net.load_state_dict(torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True))
    return net.eval(), model


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
