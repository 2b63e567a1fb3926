"""Where a run came from: package versions and the git commit of the code, as MLflow run tags.

>>> sorted(package_versions())
['bentoml', 'mindtrace', 'mlflow', 'python', 'pytorch_lightning', 'torch']
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("mindtrace", "torch", "pytorch_lightning", "mlflow", "bentoml")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a model depends on, and Python's; read without importing them."""
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package.replace("_", "-"))
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def git_state(*folders: Path) -> dict[str, str]:
    """``{"commit": sha, "dirty": "true"|"false"}`` of the first folder in a git checkout; {} if none is.

    The code that trained the model is what matters: pass the package's folder, then the working directory.
    """
    for folder in folders:
        try:
            commit = _git(folder, "rev-parse", "HEAD")
            status = _git(folder, "status", "--porcelain", "--untracked-files=no")
        except (OSError, subprocess.SubprocessError):
            continue  # no git here, or not a checkout
        return {"commit": commit, "dirty": str(bool(status)).lower()}
    return {}


def _git(folder: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()
