"""Where runs are recorded: the embedded SQLite store under MINDTRACE_HOME, or a tracking server by URI."""

from __future__ import annotations

import logging
import os
import threading

from mlflow.tracking import MlflowClient

from mindtrace.config import Config
from mindtrace.utils import ifnone

# A model is a few files: MLflow's per-file download bars only clutter the output. Still yours to turn on.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
_FIRST_CLIENT = threading.Lock()


def tracking_uri(config: Config | None = None) -> str:
    """The configured tracking URI; for the embedded SQLite default, its folder is created first.

    >>> tracking_uri(Config(env={"MINDTRACE_HOME": "/tmp/mt-doc"}))
    'sqlite:////tmp/mt-doc/mlflow/mlflow.db'
    """
    config = ifnone(config, Config())
    uri = config["MLFLOW"]["TRACKING_URI"]
    if uri.startswith("sqlite:///"):
        config["DIR_PATHS"].getpath("MLFLOW").mkdir(parents=True, exist_ok=True)
    return uri


def make_client(uri: str) -> MlflowClient:
    """MLflow's client for ``uri``, tracking and model registry alike.

    For an SQLite store, each operation opens the file anew (about 1 ms): a pooled connection keeps reading
    the file it opened, so a store moved away, restored from a backup or replaced would go unnoticed, and
    writes into a deleted file would be lost without an error.
    """
    if uri.startswith("sqlite:"):
        os.environ.setdefault("MLFLOW_SQLALCHEMYSTORE_POOLCLASS", "NullPool")  # MLflow reads only this
        # ...and then logs the pool options at INFO on every command's stderr.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    with _FIRST_CLIENT:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        # MLflow builds its process-wide table of registry stores on the first registry call, and publishes
        # the table before filling it: a second thread's first call could meet it half-filled and fail with
        # "Model Registry features are not supported by the store" (a serving worker's first registry
        # requests, arriving together, did). Building it here, one thread at a time, closes that window.
        client._get_registry_client()
    return client


def get_or_create_experiment(client: MlflowClient, name: str, config: Config | None = None) -> str:
    """The id of experiment ``name``, created with the configured artifact root when it does not exist."""
    config = ifnone(config, Config())
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_root = config["MLFLOW"].getpath("ARTIFACT_ROOT")
    # A remote server picks its own artifact store; only the embedded store gets a local folder.
    location = artifact_root.as_uri() + f"/{name}" if client.tracking_uri.startswith("sqlite:") else None
    return client.create_experiment(name, artifact_location=location)
