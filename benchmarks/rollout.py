"""``python -m benchmarks rollout``: what a shadow rollout costs the champion's answers, under wrk.

The target (the staged-rollout issue): with a candidate shadowing every request, the champion's p99 is at
most 1.3 times its p99 without one. A run, in order:

1. In a scratch home under ``--work`` (kept between runs, so each run adds two versions), train two
   versions with the real CLI: the champion with ``--policy always``, then the candidate with the next seed
   and ``--policy never`` (registered, not champion); import both into the scratch BentoML store and take
   each one's offline labels of the benchmark digits.
2. Start one ``bentoml serve service:svc`` (``--workers``, the access log off, as ``benchmarks.serve``),
   with a prediction log of its own, removed after the run.
3. Warm up, shadow off then on; then ``rounds`` rounds of three wrk points of single MNIST digits at
   ``--connections``: shadow off, on, off, the order rotated by one each round (``round_order``), so that a
   noisy minute or the first point of a round hits both conditions alike. A shadow point starts a shadow
   rollout of the candidate at ``--percent`` through ``POST /registry/models/{name}/rollout``, with
   criteria it cannot meet during the run (``NEVER_DECIDES``), waits until every worker runs the candidate,
   and ends it with ``DELETE`` after.
4. After each shadow point, still in shadow: ``--checks`` requests sent one by one (wrk cannot read answers),
   each of which must be answered by the champion, with the champion's offline label, the digits where
   the two versions disagree sent first; then ``GET .../rollout``, whose evidence shows the shadow ran: the
   candidate's shadowed requests beside the champion's answers, and their agreement.
5. Per condition the median of its points (req/s, p50, p90, p99; max latency the worst, errors added up),
   the ratios shadow / off, each round's own ratios, and a flag when wrk used more than half a core. Each
   point also records the CPU the rest of the machine used meanwhile ("others"): a run on a shared machine
   names the points its neighbours disturbed.

Results go to ``OUT/rollout.json`` (every point and every shadow's evidence) and ``OUT/rollout.md``.

>>> options = RolloutOptions(out=Path("bench-out/rollout"), rounds=1, seconds=5)
>>> results = run_rollout_benchmark(options, TrainConfig(epochs=1))   # doctest: +SKIP
>>> results["ratios"]["p99"] <= TARGET_P99_RATIO                      # doctest: +SKIP
True
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests
from rich.table import Table

from benchmarks.bodies import digit_requests
from benchmarks.process import free_port, launched, wait_ready
from benchmarks.serve import BIN, STARTUP_SECONDS, Bench, BenchOptions, Point, console, machine, medians
from benchmarks.servers import Server, server
from benchmarks.wrk import WRK_BOUND, run_wrk, write_bodies
from mindtrace.data.digits import mnist_test_digits
from mindtrace.train_config import TrainConfig

OFF, SHADOW = "off", "shadow"
CONDITIONS = (OFF, SHADOW)
TARGET_P99_RATIO = 1.3  # the issue's: champion p99 with a shadow <= 1.3x without
DEFAULT_EPOCHS = 1  # the versions only need to be real and to differ a little, not to be the best
# Criteria a rollout cannot meet while the benchmark runs: no feedback is sent, so it never has the labels
# to decide on, and it would only time out after a week.
NEVER_DECIDES = {"min_requests": 10_000_000, "min_labels": 1_000_000, "max_minutes": 10_080}
FLUSH_PAUSE_SECONDS = 2.5  # [MONITORING] FLUSH_SECONDS is 1: every worker has written its log by then
SETTLE_SECONDS = 30  # for every worker to follow a rollout's start or end (the swap poll is 2 s)
# A point during which the rest of the machine used more than this (other processes on the two cores) is
# named in the results: its figures measured the neighbours as much as the shadow.
BUSY_NEIGHBOURS = 0.1


@dataclass
class RolloutOptions:
    """What to measure; the defaults are the run BENCHMARKS.md reports."""

    out: Path
    work: Path = Path("bench-out/work-rollout")
    connections: int = 32
    seconds: int = 10
    rounds: int = 3
    warmup_seconds: int = 3
    digits: int = 1000
    workers: int = 2
    checks: int = 200
    percent: float = 100.0


def round_order(round_: int) -> list[str]:
    """The conditions of round ``round_`` (from 1) in the order measured: off, shadow, off, rotated by one
    place a round, so that over three rounds the shadow point comes first, second and last once each.

    >>> [round_order(r) for r in (1, 2, 3, 4)]   # doctest: +NORMALIZE_WHITESPACE
    [['off', 'shadow', 'off'], ['shadow', 'off', 'off'], ['off', 'off', 'shadow'],
     ['off', 'shadow', 'off']]
    """
    base = [OFF, SHADOW, OFF]
    shift = (round_ - 1) % len(base)
    return base[shift:] + base[:shift]


def ratios(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Shadow over off, of the medians rows (``benchmarks.serve.medians``) of the two conditions: p50, p90,
    p99, max latency and req/s. A ratio whose denominator is 0 is None.

    >>> keys = ("scenario", "p50_ms", "p90_ms", "p99_ms", "max_ms", "rps")
    >>> rows = [dict(zip(keys, ("off", 8.0, 10.0, 20.0, 40.0, 4000.0))),
    ...         dict(zip(keys, ("shadow", 9.0, 12.0, 24.0, 50.0, 3000.0)))]
    >>> ratios(rows)
    {'p50': 1.125, 'p90': 1.2, 'p99': 1.2, 'max': 1.25, 'rps': 0.75}
    """
    by = {row["scenario"]: row for row in rows}
    off, on = by[OFF], by[SHADOW]
    keys = {"p50": "p50_ms", "p90": "p90_ms", "p99": "p99_ms", "max": "max_ms", "rps": "rps"}
    return {name: (on[key] / off[key] if off[key] else None) for name, key in keys.items()}


def round_ratios(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each round's own ratios: its shadow point over the mean of its points with the shadow off (p99 and
    req/s), so the spread of the ratio across rounds shows beside the medians' ratio. ``points``: as
    ``asdict(Point)``, ``wrk`` holding ``p99_ms`` and ``rps``.

    >>> def p(r, s, p99, rps):
    ...     return {"round": r, "scenario": s, "wrk": {"p99_ms": p99, "rps": rps}}
    >>> round_ratios([p(1, "off", 20, 4000), p(1, "shadow", 25, 3600), p(1, "off", 30, 3800)])
    [{'round': 1, 'p99': 1.0, 'rps': 0.923}]
    """
    rounds: dict[int, dict[str, list[dict[str, float]]]] = {}
    for point in points:
        rounds.setdefault(point["round"], {}).setdefault(point["scenario"], []).append(point["wrk"])
    found = []
    for round_, by in sorted(rounds.items()):
        if not by.get(OFF) or not by.get(SHADOW):
            continue
        off = {k: statistics.mean(w[k] for w in by[OFF]) for k in ("p99_ms", "rps")}
        on = {k: statistics.mean(w[k] for w in by[SHADOW]) for k in ("p99_ms", "rps")}
        found.append(
            {
                "round": round_,
                "p99": round(on["p99_ms"] / off["p99_ms"], 3) if off["p99_ms"] else None,
                "rps": round(on["rps"] / off["rps"], 3) if off["rps"] else None,
            }
        )
    return found


def check_digits(champion: np.ndarray, candidate: np.ndarray, n: int) -> list[int]:
    """``n`` digit indices for the check during a shadow: first those the two versions label differently
    (an answer from the candidate would show there), then the others in turn.

    >>> check_digits(np.array([1, 2, 3, 4]), np.array([1, 5, 3, 6]), 3)
    [1, 3, 0]
    """
    differ = np.flatnonzero(champion != candidate).tolist()
    same = np.flatnonzero(champion == candidate).tolist()
    order = differ + same
    return [order[i % len(order)] for i in range(n)] if order else []


@dataclass
class ShadowCheck:
    """One shadow point's proof: the answers sent one by one, and the rollout's evidence just after."""

    round: int
    rollout_id: str
    workers_following: int  # the workers seen running the candidate before the point began
    checked: int  # answers read
    champion_answers: int  # answers naming the champion's version
    champion_labels: int  # answers with the champion's offline label
    differing_digits: int  # of the checked digits, those the candidate labels otherwise offline
    problem: str
    status: str  # the rollout's status before it was stopped: running, or it decided (a fault of the run)
    champion_requests: int  # from the rollout's evidence: requests the champion answered since it started
    shadowed: int  # requests the candidate shadowed
    share: float | None
    agreement: float | None
    compared: int
    candidate_p99_ms: float | None  # the candidate's model-call p99 (one shadow call, per request)
    champion_p99_ms: float | None
    dropped: float  # shadow predictions dropped, the shadow queue being full (mindtrace_shadow_dropped)
    wrk_requests: int
    evidence_ms: float = 0.0  # how long GET .../rollout took to gather this evidence


class RolloutBench:
    """One run: the scratch home and its two versions (through ``benchmarks.serve.Bench``), the server,
    the points and the shadows' evidence."""

    def __init__(self, options: RolloutOptions, root: Path):
        self.options = options
        serve_options = BenchOptions(
            out=options.out,
            work=options.work,
            servers=("mindtrace",),
            connections=(options.connections,),
            seconds=options.seconds,
            rounds=options.rounds,
            warmup_seconds=options.warmup_seconds,
            digits=options.digits,
            workers=options.workers,
        )
        self.bench = Bench(serve_options, root)  # its environment, wrk script, logs and wrk points
        self.root = root
        self.versions: dict[str, dict[str, Any]] = {}  # "champion", "candidate" -> what was trained
        self.offline: dict[str, np.ndarray] = {}
        self.texts: list[str] = []
        self.server: Server | None = None
        self.checks: list[ShadowCheck] = []
        self.others: list[dict[str, Any]] = []  # per point: the CPU other processes used meanwhile
        self.warnings: list[str] = []

    @property
    def name(self) -> str:
        return self.versions["champion"]["name"]

    # --- the two versions -----------------------------------------------------------------------------------

    def prepare(self, config: TrainConfig) -> None:
        """Train the champion and the candidate (the next seed, not promoted) with the CLI, import both,
        write the request bodies and take each version's offline labels."""
        from mindtrace.predict import batch_pixels
        from mindtrace.registry.bento import load_classifier

        bench, mindtrace = self.bench, str(BIN / "mindtrace")
        console.rule("[bold]the two versions")
        for role, policy, seed in (
            ("champion", "always", config.seed),
            ("candidate", "never", config.seed + 1),
        ):
            body = config.model_copy(update={"seed": seed}).model_dump()
            config_file = bench.work / f"train-{role}.json"
            config_file.write_text(json.dumps(body))
            argv = [mindtrace, "train", "--config", str(config_file), "--policy", policy, "--json"]
            summary = json.loads(bench._cli(argv, f"training the {role}"))
            version = str(summary["registered_version"])
            argv = [mindtrace, "registry", "import", version, "--json"]
            imported = json.loads(bench._cli(argv))
            self.versions[role] = {
                **imported,
                "version": version,
                "policy": policy,
                "test_acc": summary["test_acc"],
                "fit_seconds": summary.get("fit_seconds"),
                "train": body,
            }
        digits = mnist_test_digits(self.options.digits, config=bench.config)
        self.texts = digits.texts
        pixels = batch_pixels(digits.texts)
        for role, version in self.versions.items():
            classify, _ = load_classifier(version["tag"])  # the scratch store (run_rollout_benchmark)
            self.offline[role] = classify(pixels).argmax(axis=1)
            version["offline_accuracy"] = float((self.offline[role] == digits.labels).mean())
        requests_ = digit_requests("mindtrace", digits.texts, 1)
        bench.requests["mindtrace", 1] = requests_
        bench.bodies["mindtrace", 1] = write_bodies(
            bench.work / "wrk" / "mindtrace-1.txt", [r.body for r in requests_]
        )
        agree = float((self.offline["champion"] == self.offline["candidate"]).mean())
        self.versions["candidate"]["offline_agreement"] = agree
        for role, v in self.versions.items():
            console.print(
                f"{role}: version {v['version']} ({v['tag']}), test accuracy {v['test_acc']:.2%}, "
                f"offline on the {len(digits)} benchmark digits {v['offline_accuracy']:.2%}",
                highlight=False,
            )
        console.print(f"the two versions give the same label to {agree:.2%} of the digits", highlight=False)

    # --- the server and the rollouts ------------------------------------------------------------------------

    def start(self, stack: contextlib.ExitStack) -> Server:
        """Start ``bentoml serve service:svc`` on a free port; wait until it answers ``/readyz``.

        Its prediction log is a new one, removed after the run: an earlier run's rows (at the retention
        limit after a few runs, so every 30th flush deletes) would weigh on a later run alone.
        """
        bench = self.bench
        s = server(
            "mindtrace", False, BIN, self.options.workers, self.versions["champion"]["tag"], bench.work
        )
        monitoring = stack.enter_context(tempfile.TemporaryDirectory(prefix="monitoring-", dir=bench.work))
        s.env["MINDTRACE__DIR_PATHS__MONITORING"] = monitoring
        s.port = free_port()
        log = bench.logs / "mindtrace.log"
        s.proc = stack.enter_context(launched(s.argv(), log, cwd=self.root, env={**bench.env, **s.env}))
        wait_ready(s.proc, s.url + s.ready, log, STARTUP_SECONDS)
        console.print(f"mindtrace: ready on {s.url} (pid {s.proc.pid})", highlight=False)
        bench.servers = [s]
        self.server = s
        return s

    @property
    def rollout_url(self) -> str:
        assert self.server is not None
        return f"{self.server.url}/registry/models/{self.name}/rollout"

    def start_shadow(self) -> tuple[str, int]:
        """Start a shadow rollout of the candidate; its id, and how many workers were seen following it."""
        body = {
            "version": self.versions["candidate"]["version"],
            "mode": "shadow",
            "percent": self.options.percent,
            **NEVER_DECIDES,
        }
        response = requests.post(self.rollout_url, json=body, timeout=120)
        if response.status_code != 202:
            raise RuntimeError(f"POST rollout: HTTP {response.status_code}: {response.text[:500]}")
        rollout_id = response.json()["id"]
        return rollout_id, self._settle(rollout_id)

    def stop_shadow(self) -> dict[str, Any]:
        """Stop the running rollout; the ended rollout, once no worker runs its candidate."""
        response = requests.delete(self.rollout_url, timeout=60)
        if response.status_code != 200:
            raise RuntimeError(f"DELETE rollout: HTTP {response.status_code}: {response.text[:500]}")
        self._settle(None)
        return response.json()

    def _settle(self, rollout_id: str | None) -> int:
        """Wait until every worker runs rollout ``rollout_id`` (None: none); how many workers were seen so.

        ``GET /model`` over a new connection each time tells which worker answered and what it runs. When
        the same worker keeps answering, the others cannot be seen: after ``SETTLE_SECONDS``, what was seen
        counts, with a warning.
        """
        assert self.server is not None
        running: dict[int, str | None] = {}
        deadline = time.monotonic() + SETTLE_SECONDS
        while time.monotonic() < deadline:
            status = requests.get(f"{self.server.url}/model", timeout=30).json()
            running[status["worker_pid"]] = (status.get("rollout") or {}).get("id")
            following = sum(r == rollout_id for r in running.values())
            if following >= self.options.workers:
                return following
            time.sleep(0.05)
        following = sum(r == rollout_id for r in running.values())
        what = f"rollout {rollout_id}" if rollout_id else "no rollout"
        warning = f"after {SETTLE_SECONDS} s, {following} of the {len(running)} workers seen ran {what}"
        self.warnings.append(warning)
        console.print(warning, style="yellow", markup=False, highlight=False)
        return following

    def shadow_dropped(self) -> float:
        """``mindtrace_shadow_dropped`` so far, all workers (from ``/metrics``)."""
        assert self.server is not None
        text = requests.get(f"{self.server.url}/metrics", timeout=30).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("mindtrace_shadow_dropped")
            and not line.startswith("mindtrace_shadow_dropped_created")
        )

    def check_answers(self) -> tuple[int, int, int, int, str]:
        """``checks`` requests, one by one over new connections (so both workers answer), during a shadow:
        (answers read, naming the champion, with its offline label, digits the candidate labels otherwise,
        the first problem)."""
        assert self.server is not None
        champion = self.versions["champion"]["version"]
        mine, theirs = self.offline["champion"], self.offline["candidate"]
        digits = check_digits(mine, theirs, self.options.checks)
        read = named = same = 0
        problem = ""
        for digit in digits:
            response = requests.post(
                f"{self.server.url}/inference", json={"image": self.texts[digit]}, timeout=60
            )
            try:
                answer = response.json()
                version, label = answer["model"]["version"], answer["label"]
            except (ValueError, KeyError, TypeError):
                problem = problem or f"digit {digit}: HTTP {response.status_code} {response.text[:200]}"
                continue
            read += 1
            named += int(version == champion)
            same += int(label == mine[digit])
            if version != champion and not problem:
                problem = f"digit {digit}: answered by version {version}, not the champion {champion}"
            elif label != mine[digit] and not problem:
                problem = f"digit {digit}: label {label}, the champion's offline label {mine[digit]}"
        differing = sum(int(mine[d] != theirs[d]) for d in digits)
        return read, named, same, differing, problem

    # --- load -----------------------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Unrecorded load, shadow off then on: both conditions' code paths have run once."""
        bench, s, o = self.bench, self.server, self.options
        assert s is not None
        console.rule("[bold]warm-up")
        route, bodies = bench.requests["mindtrace", 1][0].route, bench.bodies["mindtrace", 1]
        for condition in CONDITIONS:
            if condition == SHADOW:
                self.start_shadow()
            log = bench.logs / "wrk" / f"warmup-{condition}.log"
            run_wrk(s.url, bodies, route, o.connections, o.warmup_seconds, bench.script, log)
        self.stop_shadow()

    def rounds(self) -> None:
        """The rounds: off, shadow, off, rotated; a shadow point begins and ends its own rollout."""
        o = self.options
        for round_ in range(1, o.rounds + 1):
            console.rule(f"[bold]round {round_} of {o.rounds}")
            for position, condition in enumerate(round_order(round_), 1):
                # Call counts are logged with the time of the flush (every second) that writes them: a pause
                # lets the last point's be written before a rollout starts, not counted in its evidence. Every
                # point gets it, so each begins on a server idle as long.
                time.sleep(FLUSH_PAUSE_SECONDS)
                if condition == OFF:
                    self.point(OFF, round_, position)
                    continue
                dropped = self.shadow_dropped()
                rollout_id, following = self.start_shadow()
                point = self.point(SHADOW, round_, position)
                self.checks.append(self._evidence(round_, rollout_id, following, point, dropped))
                self.stop_shadow()

    def point(self, condition: str, round_: int, position: int) -> Point:
        """One wrk point (``benchmarks.serve.Bench.point``), and what the rest of the machine used meanwhile:
        its busy CPU time but the server's and wrk's, so other processes on the two cores, and the kernel's
        loopback work for this traffic (not metered as the server's)."""
        assert self.server is not None
        o = self.options
        before, started = _busy_seconds(), time.monotonic()
        point = self.bench.point(self.server, condition, o.connections, round_, o.seconds, tag=f"p{position}")
        busy = (_busy_seconds() - before) / (time.monotonic() - started)
        others = max(0.0, busy - point.server_cpu - point.wrk.cpu)
        self.others.append({"round": round_, "scenario": condition, "others_cpu": round(others, 3)})
        return point

    def _evidence(
        self, round_: int, rollout_id: str, following: int, point: Point, dropped: float
    ) -> ShadowCheck:
        """The answers checked, then the rollout's evidence once the workers have flushed their logs."""
        read, named, same, differing, problem = self.check_answers()
        time.sleep(FLUSH_PAUSE_SECONDS)  # each worker writes its log and call counts every second
        asked = time.perf_counter()
        state = requests.get(self.rollout_url, timeout=60).json()
        evidence_ms = 1000 * (time.perf_counter() - asked)
        evidence = state.get("evidence") or {}
        champion, candidate = evidence.get("champion") or {}, evidence.get("candidate") or {}
        check = ShadowCheck(
            round=round_,
            rollout_id=rollout_id,
            workers_following=following,
            checked=read,
            champion_answers=named,
            champion_labels=same,
            differing_digits=differing,
            problem=problem,
            status=state.get("status", "?"),
            champion_requests=champion.get("requests", 0),
            shadowed=candidate.get("requests", 0),
            share=evidence.get("share"),
            agreement=evidence.get("agreement"),
            compared=evidence.get("compared", 0),
            candidate_p99_ms=candidate.get("p99_ms"),
            champion_p99_ms=champion.get("p99_ms"),
            dropped=self.shadow_dropped() - dropped,
            wrk_requests=point.wrk.requests,
            evidence_ms=round(evidence_ms, 1),
        )
        ok = named == read == self.options.checks and not problem and check.status == "running"
        console.print(
            f"shadow r{round_}: {named}/{read} answers named the champion, {same} with its label "
            f"({differing} digits the candidate labels otherwise); the candidate shadowed "
            f"{check.shadowed:,} of the champion's {check.champion_requests:,} requests (wrk "
            f"{point.wrk.requests:,}, checks {read}), agreement {_pct(check.agreement)}, dropped "
            f"{check.dropped:,.0f}, status {check.status} {problem}",
            style="green" if ok else "red",
            markup=False,
            highlight=False,
        )
        return check


def _neighbours(points: list[dict[str, Any]]) -> list[str]:
    """A warning naming the points during which other processes used more than ``BUSY_NEIGHBOURS`` cores.

    >>> _neighbours([{"round": 2, "scenario": "off", "others_cpu": 0.4}, {"round": 2, "scenario": "shadow",
    ...              "others_cpu": 0.01}])
    ['the machine was shared during 1 of 2 points (others CPU > 0.1 core): r2 off 0.40']
    """
    busy = [p for p in points if (p.get("others_cpu") or 0) > BUSY_NEIGHBOURS]
    if not busy:
        return []
    named = ", ".join(f"r{p['round']} {p['scenario']} {p['others_cpu']:.2f}" for p in busy)
    return [f"the machine was shared during {len(busy)} of {len(points)} points (others CPU > "
            f"{BUSY_NEIGHBOURS:g} core): {named}"]  # fmt: skip


def _busy_seconds() -> float:
    """CPU seconds the machine has been busy, all cores (guest time is inside user time already)."""
    import psutil

    t = psutil.cpu_times()
    return sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2%}"


def run_rollout_benchmark(
    options: RolloutOptions, config: TrainConfig, command: str = "", root: Path | None = None
) -> dict[str, Any]:
    """Run every measurement and write ``rollout.json`` and ``rollout.md`` into ``options.out``;
    ``command`` is the command line that asked for it, which the results record."""
    from benchmarks.wrk import require_wrk

    root = (root or Path.cwd()).resolve()
    if not (root / "service" / "app.py").is_file() or not (root / "benchmarks" / "__init__.py").is_file():
        raise FileNotFoundError(f"{root} holds no service/ and benchmarks/: run this in a mindtrace checkout")
    if min(options.connections, options.seconds, options.rounds, options.workers, options.checks) < 1:
        raise ValueError("--connections, --seconds, --rounds, --workers and --checks must be at least 1")
    if not 0 < options.percent <= 100:
        raise ValueError("--percent must be above 0 and at most 100")
    require_wrk()
    started = time.monotonic()
    run = RolloutBench(options, root)
    os.environ["BENTOML_HOME"] = run.bench.env["BENTOML_HOME"]  # before this process first uses BentoML
    run.prepare(config)
    with contextlib.ExitStack() as stack:  # leaving it stops the server, whatever happened
        run.start(stack)
        run.warm_up()
        run.rounds()
    points = [p for p in run.bench.points if p.scenario in CONDITIONS]
    rows = medians(points)
    rows.sort(key=lambda r: CONDITIONS.index(r["scenario"]))
    for row in rows:  # the machine's other processes, beside each condition's medians
        others = [x["others_cpu"] for x in run.others if x["scenario"] == row["scenario"]]
        row["others_cpu"] = statistics.median(others) if others else None
        row["others_cpu_max"] = max(others) if others else None
    found = ratios(rows)
    point_dicts = [
        {**asdict(p), "others_cpu": x["others_cpu"]} for p, x in zip(points, run.others, strict=True)
    ]
    results = {
        "benchmark": "rollout",
        "command": command,
        "machine": machine(),
        "versions": run.versions,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
        "rollout_body": {"mode": "shadow", "percent": options.percent, **NEVER_DECIDES},
        "medians": rows,
        "ratios": found,
        "round_ratios": round_ratios(point_dicts),
        "target": {
            "p99_ratio_at_most": TARGET_P99_RATIO,
            "met": found["p99"] is not None and found["p99"] <= TARGET_P99_RATIO,
        },
        "shadows": [asdict(c) for c in run.checks],
        "clients_saw_only_the_champion": all(
            c.champion_answers == c.checked == options.checks and not c.problem for c in run.checks
        ),
        "wrk_bound": any(r["wrk_bound"] for r in rows),
        "warnings": run.warnings + _neighbours(point_dicts),
        "points": point_dicts,
        "minutes": round((time.monotonic() - started) / 60, 1),
    }
    write_results(results, options.out)
    return results


def results_table(results: dict[str, Any]) -> Table:
    """One row per condition (the medians), with the ratios and the target in the caption."""
    o, r = results["options"], results["ratios"]
    table = Table(
        title=(
            f"shadow rollout cost: single digits, {o['connections']} connections, {o['workers']} workers; "
            f"median of {o['rounds']} rounds x {o['seconds']} s"
        ),
        caption=_verdict(results),
    )
    for column in ("condition", "points", "req/s", "req/s each", "p50 ms", "p90 ms", "p99 ms", "p99 each",
                   "max ms", "errors", "server CPU", "wrk CPU", "others CPU"):  # fmt: skip
        table.add_column(column, justify="left" if column == "condition" else "right")
    for row in results["medians"]:
        table.add_row(*_cells(row))
    table.add_row(
        "shadow / off", "", _ratio(r["rps"]), "", _ratio(r["p50"]), _ratio(r["p90"]), _ratio(r["p99"]), "",
        _ratio(r["max"]), "", "", "", "",
    )  # fmt: skip
    return table


SHADOW_COLUMNS = ("round", "workers following", "answers by the champion", "differing digits",
                  "champion requests", "shadowed", "share", "agreement", "candidate call p99 ms", "dropped",
                  "status", "GET rollout ms")  # fmt: skip


def shadows_table(results: dict[str, Any]) -> Table:
    """One row per shadow point: what the clients got, and the rollout's evidence that the shadow ran."""
    table = Table(title="each shadow point: the answers checked, and GET .../rollout just after")
    for column in SHADOW_COLUMNS:
        table.add_column(column, justify="right")
    for c in results["shadows"]:
        table.add_row(*_shadow_cells(c))
    return table


def _shadow_cells(c: dict[str, Any]) -> list[str]:
    return [
        str(c["round"]),
        str(c["workers_following"]),
        f"{c['champion_answers']}/{c['checked']}",
        str(c["differing_digits"]),
        f"{c['champion_requests']:,}",
        f"{c['shadowed']:,}",
        _pct(c["share"]),
        _pct(c["agreement"]),
        "-" if c["candidate_p99_ms"] is None else f"{c['candidate_p99_ms']:.1f}",
        f"{c['dropped']:,.0f}",
        c["status"],
        f"{c.get('evidence_ms', 0):.0f}",
    ]


def _cells(row: dict[str, Any]) -> list[str]:
    flag = " (!)" if row["wrk_bound"] else ""
    return [
        row["scenario"],
        str(len(row["rps_each"])),
        f"{row['rps']:,.0f}",
        " / ".join(f"{x:,.0f}" for x in row["rps_each"]),
        f"{row['p50_ms']:.1f}",
        f"{row['p90_ms']:.1f}",
        f"{row['p99_ms']:.1f}",
        " / ".join(f"{x:.1f}" for x in row["p99_ms_each"]),
        f"{row['max_ms']:.0f}",
        f"{row['error_count']:,}",
        f"{row['server_cpu']:.2f}",
        f"{row['wrk_cpu']:.2f}{flag}",
        "-"
        if row.get("others_cpu") is None
        else f"{row['others_cpu']:.2f} (max {row['others_cpu_max']:.2f})",
    ]


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _verdict(results: dict[str, Any]) -> str:
    r, target = results["ratios"], results["target"]
    lines = [
        f"p99 shadow / off = {_ratio(r['p99'])} (target <= {target['p99_ratio_at_most']:g}x: "
        f"{'met' if target['met'] else 'NOT met'}); req/s shadow / off = {_ratio(r['rps'])}; "
        "each round's p99 ratio: " + ", ".join(_ratio(x["p99"]) for x in results["round_ratios"]),
        "clients saw only the champion: " + ("yes" if results["clients_saw_only_the_champion"] else "NO"),
    ]
    if results["wrk_bound"]:
        lines.append(f"(!) wrk used more than {WRK_BOUND:g} core: the generator may have set the pace")
    lines += results["warnings"]
    return "\n".join(lines)


def markdown_table(results: dict[str, Any]) -> str:
    """The conditions' medians and ratios, and the shadow points, as Markdown tables (BENCHMARKS.md's)."""
    columns = ("condition", "points", "req/s", "req/s each point", "p50 ms", "p90 ms", "p99 ms",
               "p99 each point", "max ms", "errors", "server CPU", "wrk CPU", "others CPU")  # fmt: skip
    r = results["ratios"]
    ratio_row = [
        "shadow / off",
        "",
        _ratio(r["rps"]),
        "",
        _ratio(r["p50"]),
        _ratio(r["p90"]),
        _ratio(r["p99"]),
    ]
    ratio_row += ["", _ratio(r["max"]), "", "", "", ""]
    rows = [_cells(row) for row in results["medians"]] + [ratio_row]
    shadows = [_shadow_cells(c) for c in results["shadows"]]
    verdict = _verdict(results).replace("\n", "  \n")
    return f"{_markdown(columns, rows)}\n{_markdown(SHADOW_COLUMNS, shadows)}\n{verdict}\n"


def _markdown(columns: tuple[str, ...], rows: list[list[str]]) -> str:
    """A Markdown table.

    >>> print(_markdown(("a", "b"), [["1", "2"]]), end="")
    | a | b |
    |---|---|
    | 1 | 2 |
    """
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def write_results(results: dict[str, Any], out: Path) -> Path:
    """``out/rollout.json`` and ``out/rollout.md``; the folder is created."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "rollout.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    (out / "rollout.md").write_text(markdown_table(results))
    return path
