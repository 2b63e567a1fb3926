"""The load generator: wrk (C, one thread, keep-alive), cycling through real request bodies.

wrk is used because a Python client on the same cores cannot saturate these servers: it would measure
itself. Its Lua script (``SCRIPT``, written next to the bodies) reads one JSON body per line of a file,
sends them in turn over every connection, and prints wrk's figures as one JSON line that :func:`run_wrk`
reads. wrk's own CPU is metered, so a run where the generator came close to being the bottleneck is known.

>>> result = run_wrk("http://127.0.0.1:3000", Path("bodies.txt"), "/inference", 32, 10,   # doctest: +SKIP
...                  Path("wrk.lua"), Path("wrk.log"))
>>> result.rps, result.p99_ms, result.cpu                                         # doctest: +SKIP
(3434.1, 41.2, 0.31)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.process import Meter, tail

# A generator using this share of a core or more may have set the pace, not the server: such runs are flagged.
WRK_BOUND = 0.5
MARK = "WRK_RESULT "
# wrk cuts a request off after this and counts a timeout error; long enough for a stalled server to answer.
TIMEOUT_SECONDS = 10
# What both scripts share: the threads' counters (read back by done()) and the result line.
_DONE = """
local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

function done(summary, latency, requests)
  local e = summary.errors
  local statuses = ""
  for _, t in ipairs(threads) do
    if t:get("counted") then
      statuses = string.format(', "statuses": {"2xx": %d, "3xx": %d, "4xx": %d, "5xx": %d}',
        t:get("s2"), t:get("s3"), t:get("s4"), t:get("s5"))
    end
  end
  io.write(string.format(
    '%s{"requests": %.0f, "duration_us": %.0f, "bytes": %.0f, "errors": {"connect": %.0f, "read": %.0f, ' ..
    '"write": %.0f, "timeout": %.0f, "status": %.0f}, "p50_us": %.0f, "p90_us": %.0f, "p99_us": %.0f, ' ..
    '"max_us": %.0f%s}\\n',
    "MARK", summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.timeout,
    e.status, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, statuses))
end
""".replace('"MARK"', json.dumps(MARK))
SCRIPT = (
    """\
-- Written by benchmarks/wrk.py. Arguments: a file of request bodies (one JSON document a line) and the path.
local prepared = {}
local next_index = 0

function init(args)
  local headers = {["Content-Type"] = "application/json"}
  for body in io.lines(args[1]) do
    prepared[#prepared + 1] = wrk.format("POST", args[2], headers, body)
  end
end

function request()
  next_index = next_index % #prepared + 1
  return prepared[next_index]
end
"""
    + _DONE
)
# Mixed traffic: any method, path and content type, and every answer counted by its status class (which costs
# wrk some CPU per response, so only the long run uses it).
MIXED_SCRIPT = (
    """\
-- Written by benchmarks/wrk.py. Argument: a file of requests, one a line: METHOD, path, content type, body,
-- separated by tabs (the last two may be empty).
local prepared = {}
local next_index = 0
counted, s2, s3, s4, s5 = true, 0, 0, 0, 0

function init(args)
  for line in io.lines(args[1]) do
    local method, path, content_type, body = line:match("^(%u+)\t([^\t]*)\t([^\t]*)\t(.*)$")
    local headers = {}
    if content_type ~= "" then headers["Content-Type"] = content_type end
    prepared[#prepared + 1] = wrk.format(method, path, headers, body ~= "" and body or nil)
  end
end

function request()
  next_index = next_index % #prepared + 1
  return prepared[next_index]
end

function response(status, headers, body)
  if status >= 500 then s5 = s5 + 1 elseif status >= 400 then s4 = s4 + 1
  elseif status >= 300 then s3 = s3 + 1 else s2 = s2 + 1 end
end
"""
    + _DONE
)


@dataclass
class WrkResult:
    """One wrk run. ``errors``: socket errors (connect, read, write, timeout) and ``status``, the responses
    with an HTTP status of 400 or more; ``cpu``: wrk's own CPU, in cores."""

    requests: int
    seconds: float
    bytes: int
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    cpu: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)  # answers by class (2xx...), with MIXED_SCRIPT
    rps: float = field(init=False)

    def __post_init__(self) -> None:
        self.rps = self.requests / self.seconds if self.seconds else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def require_wrk() -> str:
    """The path of the ``wrk`` program; FileNotFoundError saying how to install it when it is missing."""
    found = shutil.which("wrk")
    if not found:
        raise FileNotFoundError(
            "wrk is not on PATH: the serving benchmark drives every server with it. Install it with "
            "`apt-get install wrk` (Debian, Ubuntu; scripts/test.sh does this as root) or from "
            "https://github.com/wg/wrk"
        )
    return found


def write_script(path: Path, mixed: bool = False) -> Path:
    """Write the Lua script that :func:`run_wrk` gives wrk: one route and JSON bodies, or ``mixed`` requests
    (see :func:`write_requests`) with their answers counted by status class."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(MIXED_SCRIPT if mixed else SCRIPT)
    return path


def write_requests(path: Path, requests: list[tuple[str, str, str, str]]) -> Path:
    """Write ``(method, path, content type, body)`` requests one a line for the mixed script.

    >>> import tempfile
    >>> out = write_requests(Path(tempfile.mkdtemp()) / "mixed.txt", [("GET", "/model", "", "")])
    >>> out.read_text()
    'GET\\t/model\\t\\t\\n'
    """
    lines = []
    for request in requests:
        if any(c in part for part in request for c in "\t\n\r"):
            raise ValueError(f"a tab or line break cannot go through the mixed script: {request[:2]}")
        lines.append("\t".join(request) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
    return path


def write_bodies(path: Path, bodies: list[str]) -> Path:
    """Write request bodies one a line for the script (JSON text never holds a raw newline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(body + "\n" for body in bodies))
    return path


def run_wrk(
    url: str, bodies: Path, route: str, connections: int, seconds: int, script: Path, log: Path
) -> WrkResult:
    """Drive ``url + route`` for ``seconds`` with ``connections`` keep-alive connections from one thread,
    with ``script`` (see :func:`write_script`) cycling through the ``bodies`` file.

    Raises RuntimeError when wrk prints no result (it failed to start, or the server was gone from the start).
    """
    argv = [
        require_wrk(), "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
        f"--timeout={TIMEOUT_SECONDS}s", "-s", str(script), url, "--", str(bodies), route,
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        with Meter(proc.pid) as meter:
            # Wait for the exit but leave the process unreaped, so its final CPU time can still be read.
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        proc.wait()
    lines = [line for line in tail(log, 100_000).splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}): {tail(log, 1000)}")
    raw = json.loads(lines[-1].removeprefix(MARK))
    assert meter.usage is not None
    return WrkResult(
        requests=int(raw["requests"]),
        seconds=raw["duration_us"] / 1e6,
        bytes=int(raw["bytes"]),
        errors={k: int(v) for k, v in raw["errors"].items()},
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        cpu=meter.usage.cpu_cores,
        statuses={k: int(v) for k, v in raw.get("statuses", {}).items()},
    )
