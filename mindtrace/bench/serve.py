"""``mindtrace bench serve``: this service beside the servers users would otherwise pick, in one run.

Every server serves the same registered model version and does the same work per request (base64 decode,
preprocessing, prediction; ``mindtrace.bench.rivals``). Each is started on 127.0.0.1, warmed up, driven by
the same headless Locust scenario from ``load_tests/`` at each user count, and stopped before the next:

- ``mindtrace``: ``bentoml serve service:svc`` with adaptive batching; ``mindtrace-nobatch``: the same with
  ``BATCH_MAX_REQUESTS=1``;
- ``fastapi``: a plain FastAPI + uvicorn app; ``mlflow``: ``mlflow models serve`` of a pyfunc;
- the no-op twin of each (same framework and settings, no work): that server's own ceiling.

Then, on ``mindtrace``: 256-image batch requests, single images during a retraining job, and a long run that
watches memory. Everything runs in a scratch home under ``--out`` (its own registry, model store and jobs),
with a model trained there first, so the benchmark never touches the user's registry.

>>> run_benchmark(BenchOptions(out=Path("bench-out")), TrainConfig())   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from mindtrace.bench.digits import mnist_test_digits
from mindtrace.bench.process import Meter, free_port, running, tail
from mindtrace.config import Config
from mindtrace.train_config import TrainConfig
from mindtrace.utils import available_cores

BIN = Path(sys.executable).parent
SERVERS = ("mindtrace", "mindtrace-nobatch", "fastapi", "mlflow")
# A Locust process is one Python thread: at this share of a core it is the bottleneck, not the server.
LOADGEN_SATURATED = 0.9
console = Console()


@dataclass
class BenchOptions:
    """What to measure; the defaults are the runs BENCHMARKS.md reports."""

    out: Path
    servers: tuple[str, ...] = SERVERS
    users: tuple[int, ...] = (1, 8, 32, 64)
    seconds: float = 20
    warmup_seconds: float = 3
    digits: int = 1000
    ceiling_users: int = 32
    batch_size: int = 256
    batch_users: int = 8
    retrain: bool = True
    soak_seconds: float = 300
    workers: int = field(default_factory=available_cores)


@dataclass
class Run:
    """One Locust run against one server."""

    server: str
    scenario: str  # single, ceiling, batch, retrain, soak
    users: int
    images_per_request: int
    seconds: float
    requests: int = 0
    failures: int = 0
    rps: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    accuracy: float | None = None
    same_as_offline: float | None = None  # share of digits answered with the label the model gives offline
    server_cpu: float = 0.0
    server_rss_mb: float = 0.0
    rss_mb_first: float = 0.0
    rss_mb_last: float = 0.0
    loadgen_cpu: float = 0.0
    note: str = ""

    @property
    def images_per_s(self) -> float:
        return self.rps * self.images_per_request

    @property
    def error_pct(self) -> float:
        return 100 * self.failures / self.requests if self.requests else 100.0

    @property
    def loadgen_bound(self) -> bool:
        return self.loadgen_cpu >= LOADGEN_SATURATED


@dataclass
class Contender:
    """How to start one server."""

    key: str
    noop: bool
    command: list[str]
    env: dict[str, str]
    ready: str
    api: str  # the request protocol: "mindtrace" or "mlflow"

    @property
    def name(self) -> str:
        return f"{self.key} no-op" if self.noop else self.key


class Bench:
    """One benchmark run: its scratch home, its model, its servers and its results."""

    def __init__(self, options: BenchOptions, root: Path):
        self.options = options
        self.root = root  # the project checkout: service/ and load_tests/
        self.out = options.out.resolve()
        self.work = self.out / "work"
        self.logs = self.out / "logs"
        for folder in (self.work, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
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
        }
        self.config = Config(env={k: v for k, v in self.env.items() if k.startswith("MINDTRACE")})
        self.runs: list[Run] = []
        self.model: dict[str, Any] = {}
        self.offline: np.ndarray | None = None
        self.server_pid = 0  # the server being measured: its process tree is metered

    # --- the model every server serves ----------------------------------------------------------------------

    def prepare(self, config: TrainConfig) -> None:
        """Train and register a model in the scratch home, import it into its store, write the pyfuncs."""
        console.rule("[bold]the model")
        body = config.model_dump()
        config_file = self.work / "train.json"
        config_file.write_text(json.dumps(body))
        argv = [str(BIN / "mindtrace"), "train", "--config", str(config_file), "--policy", "always", "--json"]
        summary = json.loads(self._cli(argv, "training"))
        imported = json.loads(self._cli([str(BIN / "mindtrace"), "registry", "import", "champion", "--json"]))
        from mindtrace.bench.rivals import save_pyfunc
        from mindtrace.predict import batch_pixels, probabilities
        from mindtrace.registry import Registry
        from mindtrace.registry.artifacts import load_mlp

        # One download of the version: the pyfunc wraps this folder, and the offline answers come from it.
        registry = Registry(config=self.config)
        info = registry.get_version(None, imported["version"])
        folder = registry.download_model(info, self.work / "mlflow-model")
        net = load_mlp(folder)
        save_pyfunc(folder, self.work / "pyfunc")
        save_pyfunc(None, self.work / "pyfunc-noop", noop=True)
        digits = mnist_test_digits(self.options.digits, config=self.config)
        self.offline = probabilities(net, batch_pixels(digits.texts)).argmax(axis=1)
        self.model = {
            **imported,
            "test_acc": summary["test_acc"],
            "fit_seconds": summary.get("fit_seconds"),
            "epochs": summary.get("epochs"),
            "train": body,
            "dim": net.dim,
            "offline_accuracy": float((self.offline == digits.labels).mean()),
        }
        console.print(
            f"version {info.version} ({self.model['tag']}): test accuracy {summary['test_acc']:.2%}, "
            f"offline on the {len(digits)} benchmark digits {self.model['offline_accuracy']:.2%}"
        )

    def _cli(self, argv: list[str], what: str = "") -> str:
        if what:
            console.print(f"{what}: {' '.join(argv[1:])}", highlight=False)
        done = subprocess.run(argv, env=self.env, cwd=self.work, capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])} failed: {done.stderr[-3000:]}")
        return done.stdout

    # --- servers --------------------------------------------------------------------------------------------

    def contender(self, key: str, noop: bool = False) -> Contender:
        workers = str(self.options.workers)
        if key.startswith("mindtrace"):
            env = {"MINDTRACE__SERVICE__BATCH_MAX_REQUESTS": "1"} if key == "mindtrace-nobatch" else {}
            target = "service.noop:svc" if noop else "service:svc"
            command = [str(BIN / "bentoml"), "serve", target, "--host", "127.0.0.1", "--port", "{port}"]
            return Contender(key, noop, command, env, "/readyz", "mindtrace")
        if key == "fastapi":
            command = [
                str(BIN / "uvicorn"), "mindtrace.bench.rivals:fastapi_app", "--host", "127.0.0.1",
                "--port", "{port}", "--workers", workers, "--no-access-log", "--log-level", "warning",
            ]  # fmt: skip
            env = {"MINDTRACE_BENCH_NOOP": "1"} if noop else {"MINDTRACE_BENCH_MODEL": self.model["tag"]}
            return Contender(key, noop, command, env, "/livez", "mindtrace")
        if key == "mlflow":
            model = self.work / ("pyfunc-noop" if noop else "pyfunc")
            command = [
                str(BIN / "mlflow"), "models", "serve", "-m", str(model), "--env-manager", "local",
                "-h", "127.0.0.1", "-p", "{port}", "-w", workers,
            ]  # fmt: skip
            return Contender(key, noop, command, {}, "/ping", "mlflow")
        raise ValueError(f"unknown server {key!r}; choose from {', '.join(SERVERS)}")

    def serve(self, contender: Contender):
        port = free_port()
        command = [part.replace("{port}", str(port)) for part in contender.command]
        url = f"http://127.0.0.1:{port}"
        log = self.logs / f"{contender.name.replace(' ', '-')}.log"
        console.rule(f"[bold]{contender.name}")
        env = {**self.env, **contender.env}
        return url, running(command, url + contender.ready, log, cwd=self.root, env=env, timeout=240)

    # --- load -----------------------------------------------------------------------------------------------

    def locust(
        self, contender: Contender, url: str, scenario: str, users: int, seconds: float, record: bool = True
    ) -> Run | None:
        """One headless Locust run of ``SingleImage`` (or ``Batch``), all ``users`` spawned at once."""
        batch = scenario == "batch"
        images = self.options.batch_size if batch else 1
        name = f"{contender.name}-{scenario}-{users}".replace(" ", "-")
        report = self.work / "locust" / f"{name}.json"
        report.parent.mkdir(exist_ok=True)
        argv = [
            str(BIN / "locust"), "-f", str(self.root / "load_tests" / "locustfile.py"), "--host", url,
            "--headless", "-u", str(users), "-r", str(users), "-t", f"{seconds:.0f}s", "--only-summary",
            "--report-json", str(report), "--digits", str(self.options.digits),
            "--api", contender.api, "--batch-size", str(images), "--min-accuracy", "0",
            "--stop-timeout", "10", "Batch" if batch else "SingleImage",
        ]  # fmt: skip
        log_path = self.logs / f"locust-{name}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.work)
        with Meter(self.server_pid) as server, Meter(proc.pid) as loadgen:
            try:
                proc.wait(timeout=seconds + 120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        if not record:
            return None
        run = Run(contender.name, scenario, users, images, seconds)
        self._read_stats(run, report, log_path)
        assert server.usage is not None and loadgen.usage is not None
        run.server_cpu, run.loadgen_cpu = server.usage.cpu_cores, loadgen.usage.cpu_cores
        run.server_rss_mb, run.rss_mb_first, run.rss_mb_last = (
            server.usage.rss_mb_max,
            server.usage.rss_mb_first,
            server.usage.rss_mb_last,
        )
        self.runs.append(run)
        flag = " [yellow](load generator saturated)[/]" if run.loadgen_bound else ""
        console.print(
            f"{scenario:>8} {users:>3} users: {run.rps:8.1f} req/s {run.images_per_s:9.0f} img/s  "
            f"p50 {run.p50_ms:5.0f} p99 {run.p99_ms:5.0f} ms  errors {run.error_pct:.2f}%  "
            f"server {run.server_cpu:.2f} cores {run.server_rss_mb:.0f} MB  "
            f"locust {run.loadgen_cpu:.2f} cores{flag}",
            highlight=False,
        )
        return run

    def _read_stats(self, run: Run, report: Path, log: Path) -> None:
        if not report.exists():
            run.note = "Locust wrote no report: " + tail(log, 500)
            return
        answers = json.loads(report.read_text())
        total = answers["stats"]["Aggregated"]
        run.requests, run.failures, run.rps = total["requests"], total["failures"], total["rps"]
        run.p50_ms, run.p95_ms, run.p99_ms = total["p50_ms"], total["p95_ms"], total["p99_ms"]
        if answers["checked"] and not run.server.endswith("no-op"):
            assert self.offline is not None
            run.accuracy = answers["accuracy"]
            same = [self.offline[int(i)] == label for i, label in answers["labels"].items()]
            run.same_as_offline = sum(same) / len(same)

    # --- the scenarios --------------------------------------------------------------------------------------

    def measure(self, key: str) -> None:
        """Single images at every user count, then batch requests, then the server's no-op ceiling."""
        options = self.options
        contender = self.contender(key)
        url, server = self.serve(contender)
        with server as proc:
            self.server_pid = proc.pid
            top = max(options.users)
            self.locust(contender, url, "single", top, options.warmup_seconds, record=False)
            for users in options.users:
                self.locust(contender, url, "single", users, options.seconds)
            if key != "mindtrace-nobatch" and options.batch_size > 1:
                self.locust(contender, url, "batch", options.batch_users, options.seconds)
            if key == "mindtrace":
                if options.retrain:
                    self.during_retraining(contender, url)
                if options.soak_seconds > 0:
                    self.locust(contender, url, "soak", options.ceiling_users, options.soak_seconds)
        if key == "mindtrace-nobatch":
            return  # the same server as mindtrace: one ceiling
        noop = self.contender(key, noop=True)
        url, server = self.serve(noop)
        with server as proc:
            self.server_pid = proc.pid
            self.locust(noop, url, "ceiling", options.ceiling_users, options.warmup_seconds, record=False)
            self.locust(noop, url, "ceiling", options.ceiling_users, options.seconds)

    def during_retraining(self, contender: Contender, url: str) -> None:
        """Single images at ``ceiling_users`` while the service retrains the model (promotion: never)."""
        seconds = self.options.seconds
        per_epoch = (self.model.get("fit_seconds") or 20) / (self.model.get("epochs") or 1)
        # Enough epochs to outlast the window even at full speed; the job runs at nice 10, slower under load.
        epochs = int(seconds / max(per_epoch, 0.1)) + 2
        body = {**self.model["train"], "epochs": epochs, "promotion": {"policy": "never"}}
        job = _post_json(f"{url}/retrain", body)["job_id"]
        deadline = time.monotonic() + 120
        while _get_json(f"{url}/jobs/{job}")["status"] == "queued" and time.monotonic() < deadline:
            time.sleep(0.5)
        run = self.locust(contender, url, "retrain", self.options.ceiling_users, seconds)
        state = _get_json(f"{url}/jobs/{job}")
        if run is not None:
            run.note = f"job {job}: {state['status']} when the window closed ({epochs} epochs)"
        deadline = time.monotonic() + 30 * seconds
        while state["status"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(1)
            state = _get_json(f"{url}/jobs/{job}")
        console.print(f"retraining job {job}: {state['status']}", highlight=False)


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
    """What the figures were measured on."""
    from importlib.metadata import version

    cpu = platform.processor()
    with open("/proc/cpuinfo") if Path("/proc/cpuinfo").exists() else open(os.devnull) as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    cpu = names[0] if names else cpu
    import psutil

    packages = ("torch", "bentoml", "mlflow", "fastapi", "uvicorn", "uvloop", "httptools", "locust")
    return {
        "cpu": cpu,
        "cores": available_cores(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": {p: version(p) for p in packages},
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def run_benchmark(options: BenchOptions, config: TrainConfig, root: Path | None = None) -> dict[str, Any]:
    """Run every measurement and write ``results.json`` into ``options.out`` (``write_report`` renders it)."""
    root = (root or Path.cwd()).resolve()
    if not (root / "service" / "app.py").is_file() or not (root / "load_tests" / "locustfile.py").is_file():
        raise FileNotFoundError(f"{root} holds no service/ and load_tests/: run this in a mindtrace checkout")
    if not (BIN / "locust").exists():
        raise FileNotFoundError("Locust is not installed here: pip install 'mindtrace[load]'")
    bench = Bench(options, root)
    started = time.monotonic()
    bench.prepare(config)
    for key in options.servers:
        try:
            bench.measure(key)
        except RuntimeError as exc:  # a server that does not start is reported, the others still run
            console.print(f"[red]{key}: {exc}[/]", highlight=False)
            bench.runs.append(Run(key, "single", 0, 1, 0, note=f"did not run: {str(exc)[:300]}"))
    results = {
        "machine": machine(),
        "model": bench.model,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
        "runs": [
            {
                **asdict(r),
                "images_per_s": r.images_per_s,
                "error_pct": r.error_pct,
                "loadgen_bound": r.loadgen_bound,
            }
            for r in bench.runs
        ],
        "minutes": round((time.monotonic() - started) / 60, 1),
    }
    (bench.out / "results.json").write_text(json.dumps(results, indent=2))
    return results
