"""Watching a served model: the prediction log, feedback labels, live accuracy and drift.

- ``store``: the prediction log (SQLite under ``MINDTRACE_HOME/monitoring``) with its feedback labels;
- ``drift``: a version's reference outputs and the shift detector;
- ``report``: one version's live accuracy, histogram and drift verdict, as every surface shows them;
- ``plot``: the reference and live histograms as a PNG (``mindtrace monitor --png``; not for serving).

No PyTorch here (the service imports this package); SciPy is loaded when a drift verdict is first computed.
"""

from mindtrace.monitoring.drift import DriftVerdict, Reference, detect
from mindtrace.monitoring.report import MonitoringReport, MonitoringSettings, VersionReport, version_report
from mindtrace.monitoring.store import Batch, PredictionLog, Retention

__all__ = [
    "Batch",
    "DriftVerdict",
    "MonitoringReport",
    "MonitoringSettings",
    "PredictionLog",
    "Reference",
    "Retention",
    "VersionReport",
    "detect",
    "version_report",
]
