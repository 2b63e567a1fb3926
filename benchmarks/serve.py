"""``python -m benchmarks serve``: this service beside the servers users would otherwise pick, under wrk.

A run, in order (DESIGN.md says why each step is there):

1. Train and register a model in a scratch home under ``--work`` (the user's registry is never touched),
   import it into that home's BentoML store, wrap its ONNX file in the MLflow pyfuncs, and take the model's
   offline labels of the benchmark digits from the store entry with ``load_classifier`` (the service's
   runtime).
2. Cold start: launch ``bentoml serve service:svc`` alone, with the model in the store, and time it to
   ``/readyz`` answering 200; the same for the FastAPI rival to its health URL. Repeated; the median counts.
3. Start every server of the run at once, each on its own free port (``benchmarks.servers``).
4. Correctness pass: every request body once to every server, each label compared with the offline one.
5. Warm-up, then ``rounds`` rounds: for each connection count, for each server, one wrk point; then the batch
   points. Interleaved so that a noisy minute on a shared machine hits every server alike.
6. On ``mindtrace``: a point during a retraining job, and a long run that watches memory.

Each point meters the server's process tree (CPU, RSS) and wrk itself; each server's processes are listed
with their RSS after loading and after the load.

>>> results = run_benchmark(BenchOptions(out=Path("bench-out/serve")), TrainConfig())   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from benchmarks.bodies import Correctness, DigitRequest, check_answers, digit_requests, mixed_requests
from benchmarks.process import Meter, free_port, launched, stop, tree_memory, wait_ready
from benchmarks.servers import DEFAULT_SERVERS, Server, lineup, server
from benchmarks.wrk import (
    WRK_BOUND,
    WrkResult,
    require_wrk,
    run_wrk,
    write_bodies,
    write_requests,
    write_script,
)
from mindtrace.config import Config
from mindtrace.data.digits import mnist_test_digits
from mindtrace.train_config import TrainConfig
from mindtrace.utils import available_cores

BIN = Path(sys.executable).parent
# The connection count the main target names; the retraining and long runs use it when measured.
SATURATING = 32
STARTUP_SECONDS = 300  # every server starting at once on two cores takes a while
console = Console(soft_wrap=True)  # a point's line stays one line in a log


@dataclass
class BenchOptions:
    """What to measure; the defaults are the run BENCHMARKS.md reports."""

    out: Path
    work: Path = Path("bench-out/work")
    servers: tuple[str, ...] = DEFAULT_SERVERS
    connections: tuple[int, ...] = (8, 32, 64)
    seconds: int = 10
    rounds: int = 3
    warmup_seconds: int = 3
    digits: int = 1000
    batch_images: int = 256
    batch_connections: int = 8
    retrain: bool = True
    soak_seconds: int = 600
    cold_starts: int = 3
    workers: int = field(default_factory=available_cores)

    @property
    def load_connections(self) -> int:
        """Connections of the retraining and long runs."""
        return SATURATING if SATURATING in self.connections else max(self.connections)


@dataclass
class Point:
    """One wrk run against one server, and what the server's processes used meanwhile."""

    server: str
    scenario: str  # single, batch, v2 (the Open Inference Protocol), retrain, soak
    connections: int
    round: int
    images_per_request: int
    wrk: WrkResult
    server_cpu: float
    server_rss_mb: float  # the whole tree, highest sample
    rss_mb_first: float  # the processes alive at both ends, at the start and at the end
    rss_mb_last: float
    note: str = ""
    cpu_split: list[float] = field(default_factory=list)  # each process's cores, busiest first
    unbalanced: bool = False  # one worker did the work (``one_worker_busy``)


class Bench:
    """One benchmark run: its scratch home, its model, its servers and its figures."""

    def __init__(self, options: BenchOptions, root: Path):
        self.options = options
        self.root = root  # the checkout: service/ and benchmarks/
        self.work = options.work.resolve()
        self.logs = self.work / "logs"
        (self.logs / "wrk").mkdir(parents=True, exist_ok=True)
        data = Config()["DIR_PATHS"].getpath("DATA")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("MINDTRACE", "BENTOML"))},
            "MINDTRACE_HOME": str(self.work / "home"),
            "MINDTRACE__DIR_PATHS__DATA": str(data),
            "MINDTRACE__SERVICE__ACCESS_LOG": "false",  # the documented benchmark setting (README)
            "MINDTRACE__SERVICE__WORKERS": str(options.workers),
            "BENTOML_HOME": str(self.work / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "true",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            # `mlflow models serve` runs `uvicorn` from PATH: this environment's, activated or not.
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            # The rivals, the no-op twin and the pyfuncs import `benchmarks` from the checkout.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
        }
        self.config = Config(env={k: v for k, v in self.env.items() if k.startswith("MINDTRACE")})
        self.script = write_script(self.work / "wrk" / "digits.lua")
        self.mixed_script = write_script(self.work / "wrk" / "mixed.lua", mixed=True)
        self.texts: list[str] = []  # the benchmark's digits, base64 PNG
        self.model: dict[str, Any] = {}
        self.offline = np.zeros(0, dtype=np.int64)
        self.requests: dict[tuple[str, int], list[DigitRequest]] = {}  # (api, images) -> bodies
        self.bodies: dict[tuple[str, int], Path] = {}
        self.servers: list[Server] = []
        self.points: list[Point] = []
        self.cold_start: dict[str, list[float]] = {}
        self.correct: dict[str, Correctness] = {}
        self.memory: dict[str, dict[str, list[dict[str, Any]]]] = {}  # server -> moment -> processes

    # --- the model every server serves ----------------------------------------------------------------------

    def prepare(self, config: TrainConfig) -> None:
        """Train and register a model in the scratch home, import it into its store, write the pyfuncs,
        the request bodies and the offline labels."""
        console.rule("[bold]the model")
        body = config.model_dump()
        config_file = self.work / "train.json"
        config_file.write_text(json.dumps(body))
        argv = [str(BIN / "mindtrace"), "train", "--config", str(config_file), "--policy", "always", "--json"]
        summary = json.loads(self._cli(argv, "training"))
        imported = json.loads(self._cli([str(BIN / "mindtrace"), "registry", "import", "champion", "--json"]))

        from benchmarks.pyfunc import save_pyfunc
        from mindtrace.predict import batch_pixels
        from mindtrace.registry.bento import ONNX_FILE, load_classifier

        # This process reads the scratch store too (set in run_benchmark, before BentoML's first use).
        classify, entry = load_classifier(imported["tag"])
        save_pyfunc(Path(entry.path_of(ONNX_FILE)), self.work / "pyfunc")
        save_pyfunc(None, self.work / "pyfunc-noop", noop=True)
        digits = mnist_test_digits(self.options.digits, config=self.config)
        self.texts = digits.texts
        self.offline = classify(batch_pixels(digits.texts)).argmax(axis=1)
        batch = self.options.batch_images
        shapes = [("mindtrace", 1), ("mindtrace", batch), ("mlflow", 1), ("mlflow", batch), ("v2", 1)]
        for api, images in dict.fromkeys(shapes):  # a batch of 1 is the single-image request
            requests = digit_requests(api, digits.texts, images)
            self.requests[api, images] = requests
            self.bodies[api, images] = write_bodies(
                self.work / "wrk" / f"{api}-{images}.txt", [r.body for r in requests]
            )
        self.model = {
            **imported,
            "test_acc": summary["test_acc"],
            "fit_seconds": summary.get("fit_seconds"),
            "epochs": summary.get("epochs"),
            "train": body,
            "dim": entry.info.metadata["dim"],
            "offline_accuracy": float((self.offline == digits.labels).mean()),
        }
        console.print(
            f"version {imported['version']} ({imported['tag']}): test accuracy {summary['test_acc']:.2%}, "
            f"offline on the {len(digits)} benchmark digits {self.model['offline_accuracy']:.2%}",
            highlight=False,
        )

    def _cli(self, argv: list[str], what: str = "") -> str:
        if what:
            console.print(f"{what}: {' '.join(argv[1:])}", highlight=False)
        done = subprocess.run(argv, env=self.env, cwd=self.work, capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])} failed: {done.stderr[-3000:]}")
        return done.stdout

    # --- servers --------------------------------------------------------------------------------------------

    def measure_cold_starts(self) -> None:
        """Launch each of ``mindtrace`` and ``fastapi`` alone, ``cold_starts`` times, timing it to ready."""
        for key in ("mindtrace", "fastapi"):
            if key not in self.options.servers or self.options.cold_starts < 1:
                continue
            console.rule(f"[bold]cold start: {key}")
            contender = server(key, False, BIN, self.options.workers, self.model["tag"], self.work)
            times = self.cold_start.setdefault(key, [])
            for i in range(self.options.cold_starts):
                contender.port = free_port()
                log = self.logs / f"cold-{key}-{i + 1}.log"
                started = time.monotonic()
                try:
                    with launched(
                        contender.argv(), log, cwd=self.root, env={**self.env, **contender.env}
                    ) as p:
                        wait_ready(p, contender.url + contender.ready, log, timeout=STARTUP_SECONDS)
                        times.append(time.monotonic() - started)
                except RuntimeError as exc:  # a log tail: no markup in it
                    console.print(f"{key} did not start: {exc}", style="red", markup=False, highlight=False)
                    break
                console.print(f"{key}: ready in {times[-1]:.2f} s", highlight=False)

    def start_all(self, stack: contextlib.ExitStack) -> None:
        """Start every server at once, each on its own port; wait until each is ready or has failed."""
        console.rule("[bold]starting every server")
        self.servers = lineup(self.options.servers, BIN, self.options.workers, self.model["tag"], self.work)
        logs = {s.name: self.logs / f"{s.name.replace(' ', '-')}.log" for s in self.servers}
        for s in self.servers:
            s.port = free_port()
            env = {**self.env, **s.env}
            s.proc = stack.enter_context(launched(s.argv(), logs[s.name], cwd=self.root, env=env))
        for s in self.servers:
            assert s.proc is not None
            try:
                wait_ready(s.proc, s.url + s.ready, logs[s.name], STARTUP_SECONDS)
                console.print(f"{s.name}: ready on {s.url} (pid {s.proc.pid})", highlight=False)
            except RuntimeError as exc:  # reported; the other servers still run
                s.note = f"did not start: {str(exc)[:500]}"
                console.print(f"{s.name} {s.note}", style="red", markup=False, highlight=False)
                stop(s.proc)

    @property
    def live(self) -> list[Server]:
        return [s for s in self.servers if not s.note]

    def check_correctness(self) -> None:
        """Every request body once to every server that does work; labels compared with offline ones."""
        for s in self.live:
            if s.noop:
                continue
            requests = [
                r for images in sorted({1, self.options.batch_images}) for r in self.requests[s.api, images]
            ]
            if s.name == "mindtrace":
                requests += self.requests["v2", 1]
            result = check_answers(s.url, requests, self.offline)
            self.correct[s.name] = result
            console.print(
                f"{s.name}: {result.same}/{result.checked} labels as offline {result.problem}",
                style="green" if result.same == result.checked else "red",
                markup=False,
                highlight=False,
            )

    def snapshot_memory(self, moment: str) -> None:
        for s in self.live:
            assert s.proc is not None
            self.memory.setdefault(s.name, {})[moment] = [asdict(p) for p in tree_memory(s.proc.pid)]

    # --- load -----------------------------------------------------------------------------------------------

    def point(
        self,
        s: Server,
        scenario: str,
        connections: int,
        round_: int,
        seconds: int,
        mixed: Path | None = None,
        tag: str = "",
    ) -> Point:
        """One wrk run against ``s``, recorded: digits (one or a batch, by ``scenario``), or the ``mixed``
        requests of that file. ``tag`` tells apart, in the log's name, two points of one scenario in a
        round (the rollout benchmark's two points with the shadow off)."""
        assert s.proc is not None
        images = self.options.batch_images if scenario == "batch" else 1
        api = "v2" if scenario == "v2" else s.api
        bodies, route, script = self.bodies[api, images], self.requests[api, images][0].route, self.script
        if mixed:
            bodies, route, script = mixed, "", self.mixed_script
        name = f"{s.name}-{scenario}-{connections}-r{round_}{'-' + tag if tag else ''}.log"
        log = self.logs / "wrk" / name.replace(" ", "-")
        with Meter(s.proc.pid) as server_meter:
            result = run_wrk(s.url, bodies, route, connections, seconds, script, log)
        usage = server_meter.usage
        assert usage is not None
        unbalanced = one_worker_busy(usage.cpu_by_process, self.options.workers)
        point = Point(
            s.name, scenario, connections, round_, images, result, usage.cpu_cores, usage.rss_mb_max,
            usage.rss_mb_first, usage.rss_mb_last, cpu_split=usage.cpu_by_process, unbalanced=unbalanced,
        )  # fmt: skip
        self.points.append(point)
        flag = f" [yellow]wrk used {result.cpu:.2f} cores: the generator may have set the pace[/]"
        split = " + ".join(f"{c:.2f}" for c in usage.cpu_by_process[: self.options.workers])
        console.print(
            f"{s.name:>18} {scenario:>7} c{connections:<3} r{round_}: {result.rps:8.0f} req/s "
            f"{result.rps * images:9.0f} img/s  p50 {result.p50_ms:6.1f} p90 {result.p90_ms:6.1f} "
            f"p99 {result.p99_ms:6.1f} max {result.max_ms:6.0f} ms  errors {result.error_count}  "
            f"server {usage.cpu_cores:.2f} cores ({split}) {usage.rss_mb_max:.0f} MB  wrk {result.cpu:.2f}"
            + (flag if result.cpu > WRK_BOUND else "")
            + (" [yellow]one worker took every connection[/]" if unbalanced else ""),
            highlight=False,
        )
        if result.statuses:
            console.print("answers: " + ", ".join(f"{n:,} {k}" for k, n in result.statuses.items()))
        return point

    def rounds(self) -> None:
        """Warm every server up, then the interleaved rounds of single-image and batch points."""
        options = self.options
        console.rule("[bold]warm-up")
        for s in self.live:
            log = self.logs / "wrk" / f"{s.name}-warmup.log".replace(" ", "-")
            route = self.requests[s.api, 1][0].route
            connections = max(options.connections)
            run_wrk(
                s.url, self.bodies[s.api, 1], route, connections, options.warmup_seconds, self.script, log
            )
        for round_ in range(1, options.rounds + 1):
            console.rule(f"[bold]round {round_} of {options.rounds}")
            # Each round starts with the next server: the first point of a round ran measurably slower
            # (the machine still busy with the last round's points), which a fixed order pins on one server.
            shift = (round_ - 1) % len(self.live)
            order = self.live[shift:] + self.live[:shift]
            for connections in options.connections:
                for s in order:
                    self.point(s, "single", connections, round_, options.seconds)
            for s in order:
                if self._batches(s):
                    self.point(s, "batch", options.batch_connections, round_, options.seconds)
            ours = self.ours()
            if ours:  # the Open Inference Protocol's infer route, beside /inference at the same load
                self.point(ours, "v2", options.load_connections, round_, options.seconds)

    def _batches(self, s: Server) -> bool:
        """Whether ``s`` gets batch points: every server that does work, but batching off (one model call
        per request already) and the no-op twins."""
        return self.options.batch_images > 1 and not s.noop and s.name != "mindtrace-nobatch"

    def ours(self) -> Server | None:
        return next((s for s in self.live if s.name == "mindtrace"), None)

    def during_retraining(self, s: Server) -> None:
        """Single images at ``load_connections`` while the service retrains the model (promotion: never)."""
        seconds = self.options.seconds
        per_epoch = (self.model.get("fit_seconds") or 20) / (self.model.get("epochs") or 1)
        # Enough epochs to outlast the window even at full speed; the job runs at nice 10, slower under load.
        epochs = int(seconds / max(per_epoch, 0.1)) + 2
        body = {**self.model["train"], "epochs": epochs, "promotion": {"policy": "never"}}
        console.rule("[bold]during a retraining job")
        job = _post_json(f"{s.url}/retrain", body)["job_id"]
        deadline = time.monotonic() + 120
        while _get_json(f"{s.url}/jobs/{job}")["status"] == "queued" and time.monotonic() < deadline:
            time.sleep(0.5)
        point = self.point(s, "retrain", self.options.load_connections, 1, seconds)
        state = _get_json(f"{s.url}/jobs/{job}")
        point.note = f"job {job}: {state['status']} when the window closed ({epochs} epochs)"
        deadline = time.monotonic() + 30 * seconds
        while state["status"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(1)
            state = _get_json(f"{s.url}/jobs/{job}")
        console.print(f"retraining job {job}: {state['status']}", highlight=False)

    def soak(self, s: Server) -> None:
        """One long point of mixed traffic at ``load_connections`` (single images, batches, registry reads and
        client mistakes: ``bodies.mixed_requests``), every answer counted by status class; the memory of each
        process before and after."""
        console.rule(f"[bold]long run, mixed traffic: {self.options.soak_seconds} s")
        mixed = write_requests(self.work / "wrk" / "mixed.txt", mixed_requests(self.texts))
        # Unrecorded first: what the traffic loads once (a follower worker loads MLflow's client for its first
        # registry read, about 160 MB) is not growth. Then the memory at both ends of the run compares.
        warmup = max(1, min(30, self.options.soak_seconds // 10))
        log = self.logs / "wrk" / "soak-warmup.log"
        run_wrk(s.url, mixed, "", self.options.load_connections, warmup, self.mixed_script, log)
        self.point(s, "soak", self.options.load_connections, 1, self.options.soak_seconds, mixed)
        assert s.proc is not None
        self.memory[s.name]["after the long run"] = [asdict(p) for p in tree_memory(s.proc.pid)]


def medians(points: list[Point]) -> list[dict[str, Any]]:
    """One row per server, scenario and connection count: the median of its rounds for throughput, latency
    percentiles and server CPU; the worst for max latency, memory and wrk's CPU; errors added up."""
    groups: dict[tuple[str, str, int], list[Point]] = {}
    for p in points:
        groups.setdefault((p.server, p.scenario, p.connections), []).append(p)
    rows = []
    for (server_name, scenario, connections), group in groups.items():
        runs = [p.wrk for p in group]
        errors = {kind: sum(r.errors[kind] for r in runs) for kind in runs[0].errors}
        rps = statistics.median(r.rps for r in runs)
        rows.append(
            {
                "server": server_name,
                "scenario": scenario,
                "connections": connections,
                "images_per_request": group[0].images_per_request,
                "rounds": len(group),
                "requests": sum(r.requests for r in runs),
                "rps": rps,
                "rps_each": [r.rps for r in runs],
                "images_per_s": rps * group[0].images_per_request,
                **{k: statistics.median(getattr(r, k) for r in runs) for k in ("p50_ms", "p90_ms", "p99_ms")},
                "p99_ms_each": [r.p99_ms for r in runs],
                "max_ms": max(r.max_ms for r in runs),
                "errors": errors,
                "error_count": sum(errors.values()),
                "statuses": {k: sum(r.statuses.get(k, 0) for r in runs) for k in runs[0].statuses},
                "server_cpu": statistics.median(p.server_cpu for p in group),
                "server_rss_mb": max(p.server_rss_mb for p in group),
                "rss_mb_first": group[0].rss_mb_first,
                "rss_mb_last": group[-1].rss_mb_last,
                "wrk_cpu": max(r.cpu for r in runs),
                "wrk_bound": any(r.cpu > WRK_BOUND for r in runs),
                "unbalanced_rounds": sum(p.unbalanced for p in group),
                "note": "; ".join(p.note for p in group if p.note),
            }
        )
    return rows


def one_worker_busy(cores_by_process: list[float], workers: int) -> bool:
    """True when, of a server's ``workers`` busiest processes, one was busy and another nearly idle.

    Workers that share one listening socket race to accept each connection, and the first to wake often
    takes a whole burst of them (DESIGN.md, "Connections and workers"): with a few keep-alive connections,
    one worker may serve them all while the other idles. Such a round measures one worker, not the server.

    >>> one_worker_busy([0.98, 0.04, 0.01], 2), one_worker_busy([0.95, 0.90, 0.02], 2)
    (True, False)
    """
    busiest = cores_by_process[:workers]
    return workers > 1 and len(busiest) == workers and busiest[0] >= 0.5 and busiest[-1] < 0.25 * busiest[0]


def _post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, memory, OS, Python, the packages that serve, wrk."""
    from importlib.metadata import version

    import psutil

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    packages = ("onnxruntime", "bentoml", "mlflow", "fastapi", "uvicorn", "uvloop", "httptools", "torch")
    # `wrk --version` prints its version and exits 1.
    wrk = subprocess.run([require_wrk(), "--version"], capture_output=True, text=True).stdout.split(" [")[0]
    return {
        "cpu": names[0] if names else platform.processor(),
        "cores": available_cores(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": {p: version(p) for p in packages},
        "wrk": wrk.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def run_benchmark(
    options: BenchOptions, config: TrainConfig, command: str = "", root: Path | None = None
) -> dict[str, Any]:
    """Run every measurement and write ``results.json`` into ``options.out`` (``write_report`` renders it);
    ``command`` is the command line that asked for it, which the report prints."""
    root = (root or Path.cwd()).resolve()
    if not (root / "service" / "app.py").is_file() or not (root / "benchmarks" / "__init__.py").is_file():
        raise FileNotFoundError(f"{root} holds no service/ and benchmarks/: run this in a mindtrace checkout")
    require_wrk()
    started = time.monotonic()
    bench = Bench(options, root)
    os.environ["BENTOML_HOME"] = bench.env["BENTOML_HOME"]  # before this process first uses BentoML
    bench.prepare(config)
    bench.measure_cold_starts()
    with contextlib.ExitStack() as stack:  # leaving it stops every server, whatever happened
        bench.start_all(stack)
        bench.check_correctness()
        bench.snapshot_memory("loaded")
        bench.rounds()
        bench.snapshot_memory("after load")
        ours = bench.ours()
        if ours and options.retrain:
            bench.during_retraining(ours)
        if ours and options.soak_seconds > 0:
            bench.soak(ours)
    results = {
        "command": command,
        "machine": machine(),
        "model": bench.model,
        "options": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
            "load_connections": options.load_connections,
        },
        "servers": {
            s.name: {
                "command": " ".join(s.command),
                "env": s.env,
                "note": s.note,
                "correct": asdict(bench.correct[s.name]) if s.name in bench.correct else None,
                "memory": bench.memory.get(s.name, {}),
            }
            for s in bench.servers
        },
        "cold_start": bench.cold_start,
        "medians": medians(bench.points),
        "points": [asdict(p) for p in bench.points],
        "minutes": round((time.monotonic() - started) / 60, 1),
    }
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "results.json").write_text(json.dumps(results, indent=2))
    return results
