"""The serving benchmark's charts, as PNG files: throughput and latency percentiles against connections, and
the memory of each server's processes.

>>> results = json.loads(Path("benchmarks/results/results.json").read_text())   # doctest: +SKIP
>>> draw_charts(results, Path("/tmp"))                                          # doctest: +SKIP
[PosixPath('/tmp/throughput.png'), PosixPath('/tmp/latency.png'), PosixPath('/tmp/memory.png')]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.servers import NOOP

LABELS = {
    "mindtrace": "mindtrace (BentoML, adaptive batching)",
    "mindtrace-nobatch": "mindtrace, batching off",
    "mindtrace-nolog": "mindtrace, prediction log off",
    "fastapi": "FastAPI + uvicorn",
    "mlflow": "mlflow models serve (pyfunc)",
}
ROLE_COLOURS = {"supervisor": "C0", "manager": "C2", "worker": "C1", "helper": "C7", "job": "C4"}


def label(server: str) -> str:
    """A server's name for people: ``fastapi no-op`` -> ``FastAPI + uvicorn, no-op``."""
    key = server.removesuffix(NOOP)
    return LABELS.get(key, key) + (", no-op" if server.endswith(NOOP) else "")


def draw_charts(results: dict[str, Any], out: Path) -> list[Path]:
    """Write ``throughput.png``, ``latency.png`` and ``memory.png`` into ``out``; return the paths drawn."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    single = [r for r in results["medians"] if r["scenario"] == "single" and r["requests"]]
    if not single:
        return []
    servers = list(dict.fromkeys(r["server"] for r in single))
    colours = {key: f"C{i}" for i, key in enumerate(dict.fromkeys(s.removesuffix(NOOP) for s in servers))}
    ticks = sorted({r["connections"] for r in single})

    def axes_by_connections(ax: Any) -> None:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.grid(alpha=0.3)

    def series(server: str, metric: str) -> tuple[list[int], list[float]]:
        points = sorted((r["connections"], r[metric]) for r in single if r["server"] == server)
        return [c for c, _ in points], [v for _, v in points]

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for s in servers:
        style = ":" if s.endswith(NOOP) else "-"
        ax.plot(*series(s, "rps"), style, marker="o", color=colours[s.removesuffix(NOOP)], label=label(s))
    axes_by_connections(ax)
    ax.set(xlabel="connections (wrk, one thread)", ylabel="requests/s (median of rounds)")
    ax.set_title("single images: throughput (dotted: the no-op twins)")
    ax.legend(fontsize=7)
    paths = [_save(fig, out / "throughput.png", plt)]

    columns = min(4, len(servers))
    rows = -(-len(servers) // columns)
    fig, grid = plt.subplots(
        rows, columns, figsize=(3.3 * columns, 2.9 * rows), dpi=110, sharey=True, squeeze=False
    )
    for ax, s in zip(grid.flat, servers, strict=False):
        for metric, shade in (("p50_ms", "C2"), ("p90_ms", "C1"), ("p99_ms", "C3")):
            ax.plot(*series(s, metric), marker="o", color=shade, label=metric.removesuffix("_ms"))
        axes_by_connections(ax)
        ax.set_yscale("log")
        ax.set_title(label(s), fontsize=8)
    for ax in list(grid.flat)[len(servers) :]:
        ax.axis("off")
    grid[0][0].set_ylabel("latency (ms)")
    grid[0][0].legend(fontsize=7)
    fig.suptitle("single images: latency percentiles against connections (median of rounds)", fontsize=10)
    paths.append(_save(fig, out / "latency.png", plt))

    memory = {
        name: server["memory"].get("after load") or server["memory"].get("loaded")
        for name, server in results["servers"].items()
        if server["memory"]
    }
    if memory:
        fig, ax = plt.subplots(figsize=(7.5, 0.5 * len(memory) + 1.2), dpi=110)
        for y, processes in enumerate(memory.values()):
            left = 0.0
            for p in processes:
                ax.barh(y, p["rss_mb"], left=left, color=ROLE_COLOURS[p["role"]], edgecolor="white")
                left += p["rss_mb"]
        ax.set_yticks(range(len(memory)), [label(name) for name in memory], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("resident memory (MB), one segment per process")
        roles = {p["role"] for processes in memory.values() for p in processes}
        for role, colour in ROLE_COLOURS.items():
            if role in roles:
                ax.barh(0, 0, color=colour, label=role)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.set_title("memory of each server's processes after the load")
        paths.append(_save(fig, out / "memory.png", plt))
    return paths


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
