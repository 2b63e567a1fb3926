"""Drift: are today's inputs like the test set? Black-box shift detection on the model's softmax outputs.

Each registered version carries a reference: its probabilities on the MNIST test set (recorded at
registration, ``monitoring/reference.npz`` in MLflow, copied into the BentoML store at import). A live window
(the version's newest logged predictions) is compared with it by two tests (Rabanser, Guennemann and Lipton,
"Failing Loudly", NeurIPS 2019):

- a two-sample Kolmogorov-Smirnov test per class on the softmax outputs, Bonferroni-corrected over the 10
  classes (their best detector: covariate shift moves the model's confidence);
- a chi-square test of homogeneity on the predicted-label histograms (label shift: a digit that stops
  arriving, or one that floods in).

The verdict's p-value is the smaller of the two, Bonferroni-corrected again for the pair, so that with
``alpha = 0.05`` an unshifted window is flagged at most 5 % of the time. ``benchmarks/drift.py`` measures
how often each kind of shift is caught.

>>> rng = np.random.default_rng(0)
>>> reference = Reference(rng.dirichlet(np.ones(10), 5000).astype(np.float32), "a test")
>>> detect(reference, rng.dirichlet(np.ones(10), 1000), alpha=0.05).detected
False
>>> detect(reference, rng.dirichlet(np.full(10, 0.2), 1000), alpha=0.05).detected
True
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from mindtrace.config import Config
    from mindtrace.models.net import MLPNet

NUM_CLASSES = 10
METHOD = "ks-bonferroni+chi2"
REFERENCE_FILE = "reference.npz"
# The MLflow artifact path of a run's reference, relative to its artifact root.
REFERENCE_PATH = f"monitoring/{REFERENCE_FILE}"


@dataclass(frozen=True)
class Reference:
    """A version's softmax outputs ``[n, 10]`` on a reference set, and a line saying what that set was."""

    probabilities: np.ndarray
    description: str

    @property
    def histogram(self) -> np.ndarray:
        """Predicted-label counts [10]."""
        return np.bincount(self.probabilities.argmax(axis=1), minlength=NUM_CLASSES)

    def to_bytes(self) -> bytes:
        """The reference as an ``.npz`` file: ``probabilities`` (float32) and ``description``."""
        buffer = io.BytesIO()
        meta = np.frombuffer(json.dumps({"description": self.description}).encode(), dtype=np.uint8)
        np.savez_compressed(buffer, probabilities=self.probabilities.astype(np.float32), meta=meta)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Reference:
        """Read what :meth:`to_bytes` wrote; no pickled object is loaded. ValueError when it is not one."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                probs = npz["probabilities"]
                meta = json.loads(npz["meta"].tobytes())
        except (OSError, EOFError, KeyError, ValueError) as exc:
            raise ValueError(f"not a drift reference: {exc}") from None
        if probs.ndim != 2 or probs.shape[1] != NUM_CLASSES or not len(probs):
            raise ValueError(f"not a drift reference: probabilities of shape {probs.shape}")
        return cls(probs.astype(np.float32), str(meta.get("description", "")))


def build_reference(net: MLPNet, config: Config | None = None) -> Reference:
    """``net``'s probabilities on the 10,000 MNIST test digits, through the same pixel pipeline as serving."""
    from mindtrace.data.digits import mnist_test_pixels
    from mindtrace.models.net import probabilities

    pixels, _ = mnist_test_pixels(10_000, config=config)
    return Reference(probabilities(net, pixels), f"MNIST test set ({len(pixels)} digits)")


class DriftVerdict(BaseModel):
    """Whether a live window differs from the reference; ``p_value`` is None when the window is too small."""

    detected: bool
    p_value: float | None = Field(description="the smaller test's p-value, Bonferroni-corrected for both")
    method: str = METHOD
    window: int = Field(description="predictions in the live window")
    reference: str = Field(description="what the reference is")
    alpha: float
    ks_p_value: float | None = Field(None, description="per-class KS, Bonferroni over the 10 classes")
    chi2_p_value: float | None = Field(None, description="predicted-label histograms, chi-square")
    note: str = ""


def preload() -> None:
    """Import SciPy's statistics now: a worker that will compute verdicts pays the import (about a second)
    at start-up, with its start-up heap, rather than in the middle of traffic."""
    import scipy.stats  # noqa: F401


def detect(
    reference: Reference, live: np.ndarray, alpha: float = 0.05, min_window: int = 100
) -> DriftVerdict:
    """Compare live probabilities ``[n, 10]`` with ``reference``; no verdict below ``min_window``.

    SciPy is imported here, on first use: a serving worker that never computes a verdict never loads it.
    The KS p-values are asymptotic: SciPy's exact method (its choice up to 10,000 samples) took up to 300 ms
    per class on a drifted window, the asymptotic one 2-3 ms, agreeing to about three digits.
    """
    n = len(live)
    common = {"window": n, "reference": reference.description, "alpha": alpha}
    if n < min_window:
        note = f"{n} predictions in the window; a verdict needs at least {min_window}"
        return DriftVerdict(detected=False, p_value=None, note=note, **common)
    from scipy import stats

    ks = min(
        1.0,
        NUM_CLASSES
        * min(
            stats.ks_2samp(reference.probabilities[:, k], live[:, k], method="asymp").pvalue
            for k in range(NUM_CLASSES)
        ),
    )
    counts = np.stack([reference.histogram, np.bincount(live.argmax(axis=1), minlength=NUM_CLASSES)])
    counts = counts[:, counts.sum(axis=0) > 0]  # a label neither side predicted says nothing
    chi2 = 1.0 if counts.shape[1] < 2 else float(stats.chi2_contingency(counts).pvalue)
    p_value = min(1.0, 2 * min(ks, chi2))
    return DriftVerdict(
        detected=p_value < alpha, p_value=p_value, ks_p_value=float(ks), chi2_p_value=chi2, **common
    )
