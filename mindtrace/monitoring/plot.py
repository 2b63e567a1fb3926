"""The picture ``mindtrace monitor --png`` writes: per version, the predicted-label histogram of the live
window beside the reference's, with the drift verdict and live accuracy in the title.

Matplotlib is imported here only; the service never imports this module.

>>> png = histograms_png(MonitoringReport.model_validate_json(text))   # doctest: +SKIP
"""

from __future__ import annotations

import io

import numpy as np

from mindtrace.monitoring.report import MonitoringReport, VersionReport


def histograms_png(report: MonitoringReport) -> bytes:
    """One panel per version: reference and live predicted-label shares side by side."""
    import matplotlib

    matplotlib.use("Agg")  # no display here; must precede pyplot
    from matplotlib import pyplot as plt

    n = max(1, len(report.versions))
    fig, axes = plt.subplots(n, 1, figsize=(8, 3.2 * n), dpi=110, squeeze=False)
    for ax, version in zip(axes[:, 0], report.versions, strict=False):
        _panel(ax, report.model, version)
    if not report.versions:
        axes[0, 0].text(0.5, 0.5, "no version is served", ha="center", va="center")
        axes[0, 0].set_axis_off()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _panel(ax, model: str, version: VersionReport) -> None:
    digits = np.arange(10)
    live = np.asarray(version.label_histogram, dtype=float)
    ax.bar(digits + 0.2, live / max(live.sum(), 1), width=0.4, label=f"live ({int(live.sum())} predictions)")
    if version.reference_histogram is not None:
        ref = np.asarray(version.reference_histogram, dtype=float)
        ax.bar(digits - 0.2, ref / ref.sum(), width=0.4, label=f"reference ({version.drift.reference})")
    drift = version.drift
    verdict = "no verdict" if drift.p_value is None else f"p = {drift.p_value:.2g}"
    verdict = f"DRIFT ({verdict})" if drift.detected else verdict
    accuracy = version.live_accuracy
    live_acc = "no feedback"
    if accuracy.value is not None:
        interval = f"[{accuracy.low:.1%}, {accuracy.high:.1%}]"
        live_acc = f"live accuracy {accuracy.value:.1%} {interval}, n={accuracy.labelled}"
    ax.set_title(f"{model} v{version.version}: {verdict}; {live_acc}", fontsize=9)
    ax.set_xticks(digits)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("share")
    ax.legend(fontsize=8)
