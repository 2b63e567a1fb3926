"""The serving benchmark's results as markdown tables, a verdict per target, and two charts.

>>> write_report(json.loads(Path("bench-out/results.json").read_text()), Path("bench-out"))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

LABELS = {
    "mindtrace": "mindtrace (BentoML, adaptive batching)",
    "mindtrace-nobatch": "mindtrace, batching off",
    "fastapi": "FastAPI + uvicorn",
    "mlflow": "mlflow models serve (pyfunc)",
}
SATURATED = "⚠"


def write_report(results: dict[str, Any], out: Path, markdown: Path | None = None) -> Path:
    """Write the charts into ``out`` and the report to ``markdown`` (default ``out/report.md``)."""
    markdown = markdown or out / "report.md"
    charts = _charts(results["runs"], out)
    links = [os.path.relpath(chart, markdown.parent) for chart in charts]
    markdown.write_text(render(results, links))
    return markdown


def render(results: dict[str, Any], charts: list[str]) -> str:
    runs = results["runs"]
    options = results["options"]
    users = options["ceiling_users"]
    lines = [
        "# Serving benchmark",
        "",
        _setup(results),
        "",
        "## Targets",
        "",
        targets_table(results),
        "",
        "## Single images, by concurrent users",
        "",
        _table(
            [r for r in runs if r["scenario"] == "single"],
            (
                "server",
                "users",
                "req/s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "errors",
                "accuracy",
                "same as offline",
                "server CPU",
                "server RSS",
                "Locust CPU",
            ),
        ),
        "",
        *[f"![{Path(c).stem}]({c})" for c in charts],
        "",
        f"## Each server's ceiling: a no-op endpoint, {users} users",
        "",
        "The same framework, settings and request bodies, answering a fixed prediction without any work.",
        "",
        *_ceilings(runs, users),
        "",
        f"## Batch requests of {options['batch_size']} images, {options['batch_users']} users",
        "",
        _table(
            [r for r in runs if r["scenario"] == "batch"],
            (
                "server",
                "users",
                "req/s",
                "images/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "accuracy",
                "server CPU",
                "server RSS",
                "Locust CPU",
            ),
        ),
        "",
        "## mindtrace during a retraining job, and over a long run",
        "",
        _table(
            [r for r in runs if r["scenario"] in ("retrain", "soak")],
            (
                "scenario",
                "users",
                "seconds",
                "req/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "accuracy",
                "server CPU",
                "RSS first → last",
                "note",
            ),
        ),
        "",
        "## Reproduce",
        "",
        _reproduce(results),
        "",
    ]
    return "\n".join(lines)


def targets_table(results: dict[str, Any]) -> str:
    """The verdict on each target, as a markdown table."""
    rows = _targets(results["runs"], results["options"]["ceiling_users"])
    return "\n".join(["| target | measured | |", "|---|---|---|", *rows])


def _setup(results: dict[str, Any]) -> str:
    m, model, options = results["machine"], results["model"], results["options"]
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    sentences = [
        f"Measured {m['date']} by `mindtrace bench serve` in {results['minutes']} minutes on {m['cpu']},",
        f"{m['cores']} cores, {m['memory_gb']} GB, {m['os']}, Python {m['python']}; {packages}.\n\n"
        f"Every server served version {model['version']} of `{model['name']}`",
        f"(MLP {model['dim']}, test accuracy {model['test_acc']:.2%};",
        f"{model['offline_accuracy']:.2%} offline on the {options['digits']} MNIST test digits sent)",
        f"with {options['workers']} worker processes, one torch thread each.",
        "Every request carries real MNIST test digits as base64 PNG, which every server decodes,",
        "preprocesses and classifies with the same code, and every answer is checked against its label.",
        "Locust runs on the same machine, headless, all users spawned at once,",
        f"{options['seconds']:.0f} s per point after a {options['warmup_seconds']:.0f} s warm-up.",
        f"{SATURATED} marks runs where Locust itself used 90% of a core or more:",
        "there the load generator, not the server, set the pace.",
        "Server CPU is the user and system time of the server's processes (1.00 = one core busy);",
        "the kernel's loopback network work comes on top. Run-to-run noise on this machine is about 10 %.",
    ]
    return " ".join(sentences)


def _reproduce(results: dict[str, Any]) -> str:
    o = results["options"]
    flags = [
        f"--users {' '.join(map(str, o['users']))}",
        f"--seconds {o['seconds']:g}",
        f"--batch-images {o['batch_size']}",
        f"--batch-users {o['batch_users']}",
        f"--soak-seconds {o['soak_seconds']:g}",
    ]
    if not o["retrain"]:
        flags.append("--no-retrain")
    train = " ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                     for k, v in results["model"]["train"].items())  # fmt: skip
    return (
        "In a mindtrace checkout, after `bash scripts/bootstrap.sh` and `source .venv/bin/activate`:\n\n"
        f"```bash\nmindtrace bench serve --out benchmarks --markdown BENCHMARKS.md {' '.join(flags)}\n```\n\n"
        f"The model was trained with `{train}`. `benchmarks/results.json` holds every figure; "
        "the servers' and Locust's logs stay in `benchmarks/logs/`."
    )


def _find(runs: list[dict[str, Any]], server: str, scenario: str, users: int | None = None) -> dict | None:
    for r in runs:
        if r["server"] == server and r["scenario"] == scenario and (users is None or r["users"] == users):
            return r
    return None


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "**not met**")


def _targets(runs: list[dict[str, Any]], users: int) -> list[str]:
    ours = _find(runs, "mindtrace", "single", users)
    rows: list[tuple[str, str, bool | None]] = []

    def ratio(other: str, factor: float, what: str) -> None:
        theirs = _find(runs, other, "single", users)
        if ours and theirs and theirs["rps"]:
            x = ours["rps"] / theirs["rps"]
            rows.append((what, f"{ours['rps']:.0f} / {theirs['rps']:.0f} req/s = {x:.2f}x", x >= factor))

    ratio("mlflow", 2.0, f"{users} users, single images: >= 2x `mlflow models serve`")
    ratio("fastapi", 1.0, f"{users} users, single images: >= 1x FastAPI + uvicorn")
    if ours:
        rows.append((f"{users} users: p99 <= 100 ms", f"{ours['p99_ms']:.0f} ms", ours["p99_ms"] <= 100))
        rows.append(
            (f"{users} users: 0 errors", f"{ours['failures']} of {ours['requests']}", ours["failures"] == 0)
        )
        same = ours["same_as_offline"]
        shown = "n/a" if same is None else f"{same:.2%} of digits labelled as offline"
        rows.append(("accuracy equal to offline", shown, None if same is None else same == 1.0))
    noop = _find(runs, "mindtrace no-op", "ceiling")
    if ours and noop and noop["rps"]:
        x = ours["rps"] / noop["rps"]
        rows.append(
            (">= 70% of its own no-op ceiling", f"{ours['rps']:.0f} / {noop['rps']:.0f} = {x:.0%}", x >= 0.7)
        )
    batch = _find(runs, "mindtrace", "batch")
    if batch:
        shown = f"{batch['images_per_s']:,.0f} images/s"
        rows.append(("batch requests: >= 20,000 images/s", shown, batch["images_per_s"] >= 20_000))
    retrain = _find(runs, "mindtrace", "retrain")
    if retrain and ours:
        x = retrain["p99_ms"] / ours["p99_ms"] if ours["p99_ms"] else float("inf")
        shown = f"{retrain['failures']} errors, p99 {retrain['p99_ms']:.0f} ms = {x:.1f}x idle"
        rows.append(
            ("during retraining: 0 errors, p99 <= 3x idle", shown, retrain["failures"] == 0 and x <= 3)
        )
    soak = _find(runs, "mindtrace", "soak")
    if soak:
        growth = (
            (soak["rss_mb_last"] - soak["rss_mb_first"]) / soak["rss_mb_first"] if soak["rss_mb_first"] else 0
        )
        shown = f"{soak['seconds']:.0f} s: {soak['failures']} errors, memory {growth:+.1%}"
        rows.append(
            ("long run: 0 errors, memory growth < 10%", shown, soak["failures"] == 0 and growth < 0.1)
        )
    return [f"| {what} | {shown} | {_verdict(met)} |" for what, shown, met in rows]


def _ceilings(runs: list[dict[str, Any]], users: int) -> list[str]:
    lines = [
        "| server | no-op req/s | inference req/s | inference / no-op | Locust CPU (no-op) |",
        "|---|---|---|---|---|",
    ]
    for r in runs:
        if r["scenario"] != "ceiling":
            continue
        key = r["server"].removesuffix(" no-op")
        work = _find(runs, key, "single", users)
        rps = work["rps"] if work else 0
        share = f"{rps / r['rps']:.0%}" if r["rps"] and rps else "n/a"
        flag = f" {SATURATED}" if r["loadgen_bound"] else ""
        cells = [
            LABELS.get(key, key),
            f"{r['rps']:.0f}",
            f"{rps:.0f}",
            share,
            f"{r['loadgen_cpu']:.2f}{flag}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _cell(r: dict[str, Any], column: str) -> str:
    acc = r.get("accuracy")
    same = r.get("same_as_offline")
    flag = f" {SATURATED}" if r["loadgen_bound"] else ""
    cells = {
        "server": LABELS.get(r["server"], r["server"]),
        "scenario": r["scenario"],
        "users": str(r["users"]),
        "seconds": f"{r['seconds']:.0f}",
        "req/s": f"{r['rps']:,.0f}{flag}",
        "images/s": f"{r['images_per_s']:,.0f}",
        "p50 ms": f"{r['p50_ms']:.0f}",
        "p95 ms": f"{r['p95_ms']:.0f}",
        "p99 ms": f"{r['p99_ms']:.0f}",
        "errors": f"{r['error_pct']:.2f}%",
        "accuracy": "n/a" if acc is None else f"{acc:.2%}",
        "same as offline": "n/a" if same is None else f"{same:.2%}",
        "server CPU": f"{r['server_cpu']:.2f} cores",
        "server RSS": f"{r['server_rss_mb']:,.0f} MB",
        "RSS first → last": f"{r['rss_mb_first']:,.0f} → {r['rss_mb_last']:,.0f} MB",
        "Locust CPU": f"{r['loadgen_cpu']:.2f}",
        "note": r.get("note", ""),
    }
    return cells[column]


def _table(runs: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    if not runs:
        return "(not measured in this run)"
    rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    rows += ["| " + " | ".join(_cell(r, c) for c in columns) + " |" for r in runs]
    return "\n".join(rows)


def _charts(runs: list[dict[str, Any]], out: Path) -> list[Path]:
    """Throughput and p99 latency against users, one line per server; the no-op ceilings as dotted lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    single = [r for r in runs if r["scenario"] == "single" and r["requests"]]
    servers = list(dict.fromkeys(r["server"] for r in single))
    paths = []
    for metric, ylabel, name in (
        ("rps", "requests/s", "throughput"),
        ("p99_ms", "p99 latency (ms)", "latency"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        for i, server in enumerate(servers):
            points = sorted((r["users"], r[metric]) for r in single if r["server"] == server)
            ax.plot(*zip(*points, strict=True), marker="o", color=f"C{i}", label=LABELS.get(server, server))
            ceiling = _find(runs, f"{server} no-op", "ceiling")
            if metric == "rps" and ceiling:
                ax.axhline(ceiling["rps"], color=f"C{i}", linestyle=":", linewidth=1)
        ax.set_xlabel("concurrent users")
        ax.set_ylabel(ylabel)
        ax.set_xscale("log", base=2)
        ticks = sorted({r["users"] for r in single})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        if metric == "p99_ms":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        title = "single-image throughput (dotted: no-op ceiling)" if metric == "rps" else "single-image p99"
        ax.set_title(title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
