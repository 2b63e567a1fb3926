"""``mindtrace monitor``: what GET /monitoring says about a running service, as a table or JSON, and the
reference-against-live histograms as a PNG.

The service computes the report (it knows which versions it serves); this command is its client, so the
table, the JSON and the Prometheus gauges all show one computation.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from mindtrace.cli.output import cell, console, print_json, table
from mindtrace.monitoring.report import MonitoringReport, VersionReport


def fetch_report(
    url: str, version: str | None = None, window: int | None = None, timeout: float = 30
) -> MonitoringReport:
    """GET ``url``/monitoring; ValueError with the service's own message when it refuses.

    >>> fetch_report("http://127.0.0.1:3000").versions[0].drift.detected   # doctest: +SKIP
    False
    """
    query = urllib.parse.urlencode({k: v for k, v in {"version": version, "window": window}.items() if v})
    address = f"{url.rstrip('/')}/monitoring" + (f"?{query}" if query else "")
    try:
        with urllib.request.urlopen(address, timeout=timeout) as answer:
            return MonitoringReport.model_validate_json(answer.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise ValueError(f"{address} answered {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ValueError(
            f"cannot reach the service at {url}: {reason} (is `bentoml serve` running?)"
        ) from None


def cmd_monitor(args: argparse.Namespace) -> int:
    try:
        report = fetch_report(args.url, args.version, args.window)
    except ValueError as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False)
        return 1
    if args.png:
        from mindtrace.monitoring.plot import histograms_png

        Path(args.png).write_bytes(histograms_png(report))
    if args.json:
        print_json(report)
        return 0
    rows = [_row(v) for v in report.versions]
    columns = (
        "version",
        "served",
        "requests",
        "feedback",
        "live accuracy (95% CI)",
        "drift",
        "p-value",
        "window",
    )
    console.print(table(f"monitoring of {report.model}", columns, rows))
    for v in report.versions:
        if v.drift.note:
            console.print(f"version {v.version}: {v.drift.note}", highlight=False)
    if not report.versions:
        console.print("no version is being served yet")
    if args.png:
        console.print(f"histograms written to {args.png}", highlight=False)
    return 0


def _row(v: VersionReport) -> tuple:
    accuracy = v.live_accuracy
    live = "-"
    if accuracy.value is not None:
        live = f"{accuracy.value:.2%} [{accuracy.low:.2%}, {accuracy.high:.2%}] n={accuracy.labelled}"
    drift = "DETECTED" if v.drift.detected else ("no" if v.drift.p_value is not None else "no verdict")
    return (v.version, "yes" if v.served else "no", v.requests, v.feedback, live, drift,
            cell(v.drift.p_value), v.drift.window)  # fmt: skip


def add_command(commands: argparse._SubParsersAction) -> None:
    """Add ``monitor`` to the top-level parser."""
    p = commands.add_parser(
        "monitor", help="live accuracy and drift of a running service (GET /monitoring), as a table or PNG"
    )
    p.add_argument(
        "--url",
        default=os.environ.get("MINDTRACE_URL", "http://127.0.0.1:3000"),
        help="the service (default: $MINDTRACE_URL or http://127.0.0.1:3000)",
    )
    p.add_argument("--version", default=None, help="one version, served or not (default: those served)")
    p.add_argument("--window", type=int, default=None, help="predictions in the drift window")
    p.add_argument("--png", default=None, help="also write reference-against-live histograms to this PNG")
    p.add_argument("--json", action="store_true", help="print the JSON document GET /monitoring returns")
    p.set_defaults(func=cmd_monitor)
