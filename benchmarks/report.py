"""The serving benchmark's results as markdown: a verdict per target of issue 13, a table per connection
count, the memory of every process, cold starts, the correctness pass, and how to reproduce the run.

Targets are reported, never asserted: a noisy machine must not fail anything.

>>> results = json.loads(Path("bench-out/serve/results.json").read_text())   # doctest: +SKIP
>>> write_report(results, Path("bench-out/serve"), Path("BENCHMARKS.md"))      # doctest: +SKIP
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

from benchmarks.charts import draw_charts, label
from benchmarks.servers import NOOP, family
from benchmarks.wrk import WRK_BOUND

FLAG = "⚠"
RIVAL = "fastapi"
SATURATING, LIGHT = 32, 8  # the connection counts the targets name
TARGET_WORKERS, TARGET_BATCH = 2, 256


def write_report(results: dict[str, Any], out: Path, markdown: Path | None = None) -> Path:
    """Write the charts into ``out`` and the report to ``markdown`` (default ``out/report.md``).

    Sections of an existing ``markdown`` that this report does not write (BENCHMARKS.md's drift and rollout
    sections, from the other benchmarks) are kept after it."""
    markdown = markdown or out / "report.md"
    charts = draw_charts(results, out)
    report = render(results, [os.path.relpath(c, markdown.parent) for c in charts])
    kept = other_sections(markdown.read_text(), report) if markdown.exists() else ""
    markdown.write_text(report + ("\n" + kept if kept else ""))
    return markdown


def other_sections(existing: str, report: str) -> str:
    r"""The part of ``existing`` from its first ``## `` section that ``report`` has no section of.

    >>> other_sections("# B\n## Targets\nold\n## Drift\nkept\n", "# B\n## Targets\nnew\n")
    '## Drift\nkept\n'
    """
    ours = {line for line in report.splitlines() if line.startswith("## ")}
    lines = existing.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith("## ") and line.rstrip("\n") not in ours:
            return "".join(lines[i:])
    return ""


def render(results: dict[str, Any], charts: list[str]) -> str:
    """The whole report; ``charts`` are the chart files relative to where it is written."""
    o = results["options"]
    rows = results["medians"]
    sections = ["# Serving benchmark", _setup(results), "## Targets", targets_table(results)]
    if any(r["wrk_bound"] for r in rows):
        sections.append(
            f"{FLAG} marks runs where wrk used more than {WRK_BOUND} of a core: there the generator may "
            "have set the pace, not the server."
        )
    if any(r.get("unbalanced_rounds") for r in rows):
        sections.append(
            f"{FLAG} beside the server's CPU counts the rounds in which one worker took every connection "
            "and the other idled: the workers share one listening socket (DESIGN.md, Connections and "
            "workers)."
        )
    sections.append("## Single images")
    for connections in o["connections"]:
        sections += [f"### {connections} connections", _single(rows, connections)]
    sections += [f"![{Path(c).stem}]({c})" for c in charts if Path(c).stem != "memory"]
    sections += [
        f"## Batch requests of {o['batch_images']} images, {o['batch_connections']} connections",
        _table(
            [r for r in rows if r["scenario"] == "batch"],
            ("server", "req/s", "images/s", "vs FastAPI", "p50", "p99", "max", "errors", "CPU", "wrk"),
        ),
        "## The Open Inference Protocol beside /inference",
        _v2(rows, o["load_connections"]),
        "## Memory of each process",
        _memory(results),
        *[f"![memory]({c})" for c in charts if Path(c).stem == "memory"],
        "## Cold start",
        _cold_start(results),
        "## Correctness pass",
        _correctness(results),
        "## mindtrace during a retraining job, and over a long run",
        _table(
            [r for r in rows if r["scenario"] in ("retrain", "soak")],
            (
                "scenario",
                "connections",
                "req/s",
                "p50",
                "p99",
                "max",
                "answers",
                "errors",
                "CPU",
                "RSS",
                "note",
            ),
        ),
        "## Reproduce",
        _reproduce(results),
    ]
    return "\n\n".join(sections) + "\n"


def _v2(rows: list[dict[str, Any]], connections: int) -> str:
    """The service's V2 infer route (one digit as UINT8 pixels in JSON) beside /inference (one base64 PNG)."""
    single, v2 = _find(rows, "mindtrace", "single", connections), _find(rows, "mindtrace", "v2", connections)
    if not single or not v2:
        return "(not measured in this run)"
    table = _table([single, v2], ("scenario", "connections", "req/s", "p50", "p99", "max", "errors", "CPU"))
    return (
        "`POST /v2/models/mnist-mlp/infer` with one digit as UINT8 pixels in JSON (784 numbers, what a "
        "KServe client sends; tritonclient sends binary tensor data by default, which is cheaper to read) "
        "against `POST /inference` with the same digit as base64 PNG, "
        f"{connections} connections: {v2['rps'] / single['rps']:.2f}x the requests per second.\n\n{table}"
    )


def _find(
    rows: list[dict[str, Any]], server: str, scenario: str, connections: int | None = None
) -> dict | None:
    for r in rows:
        if r["server"] == server and r["scenario"] == scenario and connections in (None, r["connections"]):
            return r
    return None


def targets_table(results: dict[str, Any]) -> str:
    """The verdict on each target of the serving issues (13, 14), as a markdown table; n/a where the run
    measured otherwise."""
    rows, o = results["medians"], results["options"]
    found: list[str] = []

    def add(target: str, measured: str, met: bool | None) -> None:
        verdict = "n/a" if met is None else "met" if met else "**not met**"
        found.append(f"| {target} | {measured} | {verdict} |")

    ours, rival = _find(rows, "mindtrace", "single", SATURATING), _find(rows, RIVAL, "single", SATURATING)
    at = f"single image, {SATURATING} connections:"
    if ours and rival and rival["rps"] and rival["p99_ms"]:
        x, y = ours["rps"] / rival["rps"], ours["p99_ms"] / rival["p99_ms"]
        add(
            f"{at} throughput >= 1.0x FastAPI",
            f"{ours['rps']:,.0f} / {rival['rps']:,.0f} req/s = {x:.2f}x",
            x >= 1,
        )
        add(
            f"{at} p99 <= 2x FastAPI's", f"{ours['p99_ms']:.1f} / {rival['p99_ms']:.1f} ms = {y:.2f}x", y <= 2
        )
    if ours:
        add(
            f"{at} 0 errors",
            f"{ours['error_count']} in {ours['requests']:,} requests",
            ours["error_count"] == 0,
        )
    light = _find(rows, "mindtrace", "single", LIGHT)
    if light:
        add(
            f"single image, {LIGHT} connections: p99 <= 10 ms",
            f"{light['p99_ms']:.1f} ms",
            light["p99_ms"] <= 10,
        )
    memory = results["servers"].get("mindtrace", {}).get("memory", {}).get("after load")
    if memory:
        total = sum(p["rss_mb"] for p in memory)
        supervisor = sum(p["rss_mb"] for p in memory if p["role"] == "supervisor")
        fits = o["workers"] == TARGET_WORKERS
        what = f"bentoml serve, {o['workers']} workers, model loaded: <= 700 MB RSS in all"
        add(what, f"{total:,.0f} MB in {len(memory)} processes", total <= 700 if fits else None)
        add(
            "... the supervising process <= 150 MB",
            f"{supervisor:,.0f} MB",
            supervisor <= 150 if fits else None,
        )
    soak = _find(rows, "mindtrace", "soak")
    if soak and soak.get("statuses"):
        answers, seconds = soak["statuses"], o["soak_seconds"]
        sockets = sum(v for k, v in soak["errors"].items() if k != "status")
        what = f"long run, {seconds} s of mixed traffic at {soak['connections']} connections: 0 5xx"
        add(
            what,
            f"{answers['5xx']} 5xx, {sockets} socket errors in {soak['requests']:,}",
            not answers["5xx"] + sockets,
        )
        growth = soak["rss_mb_last"] / soak["rss_mb_first"] - 1 if soak["rss_mb_first"] else 0.0
        measured = f"{soak['rss_mb_first']:,.0f} → {soak['rss_mb_last']:,.0f} MB ({growth:+.1%})"
        add("... resident memory grows < 10 %", measured, growth < 0.10)
    cold = results["cold_start"].get("mindtrace")
    if cold:  # the first launch is the scratch home's first start, the others are restarts (_cold_start)
        first, restarts = cold[0], cold[1:]
        if restarts:
            figure = statistics.median(restarts)
            measured = f"{figure:.2f} s (median of the restarts; the first start {first:.2f} s)"
        else:
            figure, measured = first, f"{first:.2f} s (a first start)"
        add("cold start to /readyz 200, model in the store: <= 5 s", measured, figure <= 5)
    batch = _find(rows, "mindtrace", "batch")
    if batch:
        size, rate = batch["images_per_request"], batch["images_per_s"]
        what = f"batch requests of {size} images: >= 25,000 images/s"
        add(what, f"{rate:,.0f} images/s", rate >= 25_000 if size == TARGET_BATCH else None)
    return "\n".join(["| target | measured | |", "|---|---|---|", *found])


def _setup(results: dict[str, Any]) -> str:
    m, model, o = results["machine"], results["model"], results["options"]
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    return " ".join(
        [
            f"Measured {m['date']} in {results['minutes']} minutes on {m['cpu']}, {m['cores']} cores,",
            f"{m['memory_gb']} GB, {m['os']}, Python {m['python']}; {packages}; {m['wrk']}.\n\n"
            f"Every server served version {model['version']} of `{model['name']}` (MLP {model['dim']},",
            f"test accuracy {model['test_acc']:.2%}) with ONNX Runtime, {o['workers']} worker processes",
            "each.",
            f"Every request carries real MNIST test digits as base64 PNG ({o['digits']} of them, in turn),",
            "which every server decodes, preprocesses and classifies with the same code.",
            "The load comes from wrk on the same machine: one thread, keep-alive connections, closed loop.",
            "All servers run at once, each on its own port; idle ones cost next to nothing.",
            f"Each point lasts {o['seconds']} s; rounds ({o['rounds']}) interleave the servers",
            "(round, then connection count, then server), and the tables give the median of the rounds",
            "(latency percentiles too), the worst max latency, and the errors of all rounds added up.",
            "Errors are wrk's socket errors (connect, read, write, timeout) plus the responses with",
            "a status >= 400.",
            "Server CPU is the user and system time of the server's processes (1.00 = one core busy);",
            "the kernel's loopback work comes on top.",
        ]
    )


def _ratio(rows: list[dict[str, Any]], r: dict[str, Any]) -> str:
    rival = _find(rows, RIVAL, r["scenario"], r["connections"])
    if r["server"].endswith(NOOP) or not rival or not rival["rps"] or r["server"] == RIVAL:
        return ""
    return (
        f"{r['rps'] / rival['rps']:.2f}x, p99 {r['p99_ms'] / rival['p99_ms']:.2f}x" if rival["p99_ms"] else ""
    )


def _single(rows: list[dict[str, Any]], connections: int) -> str:
    chosen = [r for r in rows if r["scenario"] == "single" and r["connections"] == connections]
    return _table(
        chosen,
        (
            "server",
            "req/s",
            "rounds",
            "vs FastAPI",
            "of no-op",
            "p50",
            "p90",
            "p99",
            "max",
            "errors",
            "CPU",
            "wrk",
        ),
        rows,
    )


def _table(
    chosen: list[dict[str, Any]], columns: tuple[str, ...], rows: list[dict[str, Any]] | None = None
) -> str:
    if not chosen:
        return "(not measured in this run)"
    rows = rows if rows is not None else chosen
    header = {
        "req/s": "req/s",
        "vs FastAPI": "vs FastAPI (req/s, p99)",
        "of no-op": "of its no-op",
        "rounds": "req/s each round",
        "CPU": "server CPU (cores)",
        "wrk": "wrk CPU",
        "RSS": "RSS first → last",
        **{k: f"{k} ms" for k in ("p50", "p90", "p99", "max")},
    }
    lines = ["| " + " | ".join(header.get(c, c) for c in columns) + " |", "|" + "---|" * len(columns)]
    for r in chosen:
        lines.append("| " + " | ".join(_cell(r, c, rows) for c in columns) + " |")
    return "\n".join(lines)


def _cell(r: dict[str, Any], column: str, rows: list[dict[str, Any]]) -> str:
    if column == "of no-op":
        noop = _find(rows, family(r["server"].removesuffix(NOOP)) + NOOP, "single", r["connections"])
        return (
            f"{r['rps'] / noop['rps']:.0%}" if noop and noop["rps"] and not r["server"].endswith(NOOP) else ""
        )
    counted = r.get("statuses")  # then 4xx answers are the traffic's client mistakes, shown as answers
    errors = ", ".join(f"{v} {k}" for k, v in r["errors"].items() if v and not (counted and k == "status"))
    cells = {
        "server": label(r["server"]),
        "scenario": r["scenario"],
        "connections": str(r["connections"]),
        "req/s": f"{r['rps']:,.0f}",
        "rounds": " / ".join(f"{x:,.0f}" for x in r["rps_each"]),
        "images/s": f"{r['images_per_s']:,.0f}",
        "vs FastAPI": _ratio(rows, r),
        "p50": f"{r['p50_ms']:.1f}",
        "p90": f"{r['p90_ms']:.1f}",
        "p99": f"{r['p99_ms']:.1f}",
        "max": f"{r['max_ms']:.0f}",
        "errors": f"{errors}" if errors else "0",
        "answers": ", ".join(f"{n:,} {k}" for k, n in (counted or {}).items() if n),
        "CPU": f"{r['server_cpu']:.2f}" + _unbalanced(r),
        "wrk": f"{r['wrk_cpu']:.2f}" + (f" {FLAG}" if r["wrk_bound"] else ""),
        "RSS": f"{r['rss_mb_first']:,.0f} → {r['rss_mb_last']:,.0f} MB",
        "note": r["note"],
    }
    return cells[column]


def _unbalanced(r: dict[str, Any]) -> str:
    n = r.get("unbalanced_rounds", 0)  # absent from results written before it was measured
    return f" {FLAG} one worker busy in {n} of {r['rounds']} rounds" if n else ""


def _memory(results: dict[str, Any]) -> str:
    moments = list(dict.fromkeys(m for s in results["servers"].values() for m in s["memory"]))
    if not moments:
        return "(not measured in this run)"
    lines = [
        "Resident memory (RSS, MB) of every process of every server: after the correctness pass (loaded), "
        "after the rounds, and after the long run where there was one. RSS counts shared pages in each "
        "process that maps them, so a sum is an upper bound.",
        "",
        "| server | pid | role | " + " | ".join(moments) + " | command |",
        "|" + "---|" * (len(moments) + 4),
    ]
    for name, server in results["servers"].items():
        by_pid: dict[int, dict[str, Any]] = {}
        for moment, processes in server["memory"].items():
            for p in processes:
                by_pid.setdefault(p["pid"], {**p, "rss": {}})["rss"][moment] = p["rss_mb"]
        for p in by_pid.values():
            sizes = " | ".join(f"{p['rss'][m]:,.0f}" if m in p["rss"] else "" for m in moments)
            lines.append(f"| {label(name)} | {p['pid']} | {p['role']} | {sizes} | `{p['command']}` |")
        if by_pid:
            totals = " | ".join(
                f"**{sum(q['rss_mb'] for q in server['memory'][m]):,.0f}**" if m in server["memory"] else ""
                for m in moments
            )
            lines.append(f"| {label(name)} | | **all** | {totals} | |")
    return "\n".join(lines)


def _cold_start(results: dict[str, Any]) -> str:
    if not results["cold_start"]:
        return "(not measured in this run)"
    lines = [
        "From launching the command to its readiness URL answering 200 (`/readyz` for BentoML, `/livez` for "
        "the FastAPI app, whose workers answer only once the model is loaded), with the model already in the "
        "store; each launch alone on the machine. The service's first launch is the first start of its "
        "scratch home, which asks the registry before it serves; the launches after it are restarts, which "
        "start with what was served last and ask the registry straight after (DESIGN.md, Hot-swap).",
        "",
        "| server | each launch (s) | median (s) |",
        "|---|---|---|",
    ]
    for name, times in results["cold_start"].items():
        median = f"{statistics.median(times):.2f}" if times else "did not start"
        lines.append(f"| {label(name)} | {' / '.join(f'{t:.2f}' for t in times)} | {median} |")
    return "\n".join(lines)


def _correctness(results: dict[str, Any]) -> str:
    lines = [
        "Before the load, every request body went once to every server that does work, and each label was "
        "compared with the model's own offline answer (`load_classifier` on the same store entry).",
        "",
        "| server | labels as offline | first problem |",
        "|---|---|---|",
    ]
    for name, server in results["servers"].items():
        c = server["correct"]
        if server["note"]:
            lines.append(f"| {label(name)} | | {server['note'][:200]} |")
        elif c:
            lines.append(f"| {label(name)} | {c['same']} of {c['checked']} | {c['problem']} |")
    return "\n".join(lines)


def _reproduce(results: dict[str, Any]) -> str:
    train = " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in results["model"]["train"].items()
    )
    logs = f"{results['options']['work']}/logs"
    return (
        "In a mindtrace checkout, after `bash scripts/bootstrap.sh` (and `apt-get install wrk`):\n\n"
        f"```bash\n{results['command']}\n```\n\n"
        f"The model was trained with `{train}`. `results.json` beside the charts holds every figure, each "
        f"round of each point included; the servers' and wrk's logs stay in `{logs}`."
    )
