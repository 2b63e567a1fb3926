"""The monitoring deployment files: Prometheus alerting rules (deploy/prometheus/) and the Grafana dashboard
(deploy/grafana/mindtrace.json).

- The rules pass ``promtool check rules`` and their unit tests ``promtool test rules``, which feed synthetic
  series and assert when each alert fires and when it must not; every dashboard query passes promtool's
  PromQL parser too. promtool is Debian's ``prometheus`` package (scripts/test.sh installs it); without it
  these tests are skipped.
- The dashboard is importable as it stands: one Prometheus data source variable, unique panel ids, no link
  leaving the dashboard, a query behind every panel we promise.
- Most importantly, every metric a query names (dashboard and alerts alike) is exported by a real running
  service, and every label a query matches or groups on is carried by it. A query on a misspelt metric or
  label is valid PromQL that silently selects nothing: an empty panel, an alert that can never fire. So the
  names are compared with a real ``bentoml serve``'s /metrics, after traffic (good and bad requests), a
  retraining job and a canary rollout have made the service create its series.

Names are compared as Prometheus stores them, suffix included: a counter ``x`` is scraped as ``x_total``
(``x_created`` is not exported by the multiprocess collector BentoML uses), a histogram as ``x_bucket``,
``x_sum`` and ``x_count``. A query must name the sample, so a missing name is reported with the family it
belongs to when the family exists under another suffix.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from mindtrace.images import EXAMPLE_IMAGE
from tests.helpers import ROOT, served, service_env, train, wait_for, warnings_in

PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "mindtrace.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (Debian: apt-get install prometheus; scripts/test.sh does)",
)
DATASOURCE = "${DS_PROMETHEUS}"
API_TOKEN = "api-token-5d1e0c"
INFERENCE_TOKEN = "inference-token-93a7f4"
INFER = {"Authorization": f"Bearer {INFERENCE_TOKEN}"}
ADMIN = {"Authorization": f"Bearer {API_TOKEN}"}
TINY_RETRAIN = {"epochs": 1, "num_train": 3000, "hidden_dims": [32], "promotion": {"policy": "always"}}


# --- a small PromQL tokenizer: the metric names and label names of a query ----------------------------------


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


AGGREGATIONS = _words("sum min max avg group stddev stdvar count count_values bottomk topk quantile")
FUNCTIONS = _words(
    """abs absent absent_over_time ceil changes clamp clamp_max clamp_min day_of_month day_of_week day_of_year
    days_in_month delta deriv exp floor histogram_count histogram_fraction histogram_quantile histogram_sum
    holt_winters hour idelta increase irate label_join label_replace ln log2 log10 minute month predict_linear
    rate resets round scalar sgn sort sort_desc sqrt time timestamp vector year avg_over_time min_over_time
    max_over_time sum_over_time count_over_time quantile_over_time stddev_over_time stdvar_over_time
    last_over_time present_over_time acos acosh asin asinh atan atanh cos cosh sin sinh tan tanh deg pi rad"""
)
LABEL_LISTS = _words("by without on ignoring group_left group_right")
KEYWORDS = _words("and or unless bool offset atan2 inf nan")
_STRING = r""""(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`"""
_MATCHER = re.compile(rf"\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*(?:{_STRING})\s*,?")
TOKEN = re.compile(
    rf"""
    (?P<space>\s+)
    | (?P<string>{_STRING})
    | (?P<braces>\{{(?:{_MATCHER.pattern})*\s*\}})          # a selector's label matchers
    | (?P<range>\[[^\]]*\])                                  # [5m], [$__rate_interval], [1h:5m]
    | (?P<variable>\$\{{?\w+(?::\w+)?\}}?)                   # a Grafana variable
    | (?P<number>(?:0x[0-9a-fA-F]+|\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+)(?:[a-zA-Z]+\d*)*)  # 0.99, 1e3, 5m
    | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<punct>==|!=|>=|<=|[-+*/%^()<>,@])
    """,
    re.VERBOSE,
)


@dataclass
class Query:
    """What a PromQL expression reads: each metric with the labels its selectors match on, and the labels
    named by ``by``/``without``/``on``/``ignoring``/``group_left``/``group_right``."""

    metrics: dict[str, set[str]] = field(default_factory=dict)
    grouping: set[str] = field(default_factory=set)


def parse_query(expr: str) -> Query:
    """The metric and label names of ``expr``; ValueError for what this tokenizer does not understand
    (an unknown function is a typo more often than not)."""
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(expr):
        match = TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"cannot read {expr[position : position + 30]!r} in {expr!r}")
        if match.lastgroup != "space":
            tokens.append((match.lastgroup, match.group()))
        position = match.end()

    query = Query()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if kind == "braces":
            raise ValueError(f"a selector without a metric name in {expr!r}")
        if kind != "ident":
            i += 1
            continue
        word = text.lower()
        if word in LABEL_LISTS:
            if following[1] == "(":  # group_left and group_right may stand without a list
                close = next(j for j in range(i + 2, len(tokens)) if tokens[j][1] == ")")
                query.grouping.update(t for k, t in tokens[i + 2 : close] if k == "ident")
                i = close
        elif word in AGGREGATIONS or word in FUNCTIONS or word in KEYWORDS:
            pass
        elif following[1] == "(":
            raise ValueError(f"unknown PromQL function {text!r} in {expr!r}")
        else:
            labels = query.metrics.setdefault(text, set())
            if following[0] == "braces":
                labels.update(_MATCHER.findall(following[1]))
                i += 1
        i += 1
    return query


def test_the_tokenizer_finds_metrics_and_labels_and_nothing_else():
    quantile = parse_query(
        "histogram_quantile(0.99, sum by (le) ("
        'rate(http_seconds_bucket{endpoint=~"/a|/b{2}",code!="5"}[$__rate_interval]))) > 0.5'
    )
    assert quantile.metrics == {"http_seconds_bucket": {"endpoint", "code"}} and quantile.grouping == {"le"}
    joined = parse_query(
        "min by (model, version) (accuracy) < 0.9 and on (model, version) max(labelled) without (pid) >= 1e2"
        " or absent(up{job='x'} == 1) offset 5m"
    )
    assert joined.metrics == {"accuracy": set(), "labelled": set(), "up": {"job"}}
    assert joined.grouping == {"model", "version", "pid"}
    ratio = parse_query("sum(rate(x_total[${window}])) / ignoring(a) group_left b")
    assert ratio.metrics == {"x_total": set(), "b": set()} and ratio.grouping == {"a"}
    for bad in ("rte(x[5m])", '{__name__="x"}', "x{a=1}"):
        with pytest.raises(ValueError):
            parse_query(bad)


# --- the files ---------------------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs() -> dict[str, str]:
    """Every query of the dashboard, keyed by panel title and refId."""
    return {
        f"{panel['title']} {target['refId']}": target["expr"]
        for panel in panels(dashboard())
        for target in panel.get("targets", [])
    }


def alert_exprs() -> dict[str, str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=120)
    print(f"$ promtool {' '.join(map(str, args))}\n{done.stdout}{done.stderr}")
    return done


@needs_promtool
def test_the_alert_rules_are_valid():
    done = promtool("check", "rules", ALERTS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 6 rules found" in done.stdout


@needs_promtool
def test_the_alert_rules_fire_when_they_should_and_only_then():
    done = promtool("test", "rules", ALERTS_TEST)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path):
    """Each query, its Grafana range variable replaced, as a recording rule that promtool parses."""
    exprs = dashboard_exprs()
    rules = [
        {"record": f"dashboard:query_{n}", "expr": expr.replace("$__rate_interval", "5m")}
        for n, expr in enumerate(exprs.values())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = promtool("check", "rules", path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout


def test_the_dashboard_is_self_contained_and_shows_what_it_promises():
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41 and board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert board.get("links", []) == []
    assert not re.search(r"https?://", DASHBOARD.read_text()), "no link may leave the dashboard"

    all_panels = list(panels(board))
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids))
    shown = [p for p in all_panels if p["type"] != "row"]
    for panel in shown:
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE and target["expr"].strip(), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["w"] > 0 and grid["h"] > 0, panel["title"]

    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in shown}
    promised = {
        "requests/s by endpoint": "bentoml_service_request_total",
        "error rate": '"5.."',
        "p50 / p90 / p99": "histogram_quantile(0.99,",
        "predictions/s by label": "mindtrace_predictions_total",
        "live accuracy per version": "mindtrace_live_accuracy",
        "drift p-value per version": "mindtrace_drift_p_value",
        "drift detected per version": "mindtrace_drift_detected",
        "served model version": "mindtrace_served_model",
        "model swaps": "mindtrace_model_swaps_total",
        "retrain jobs": "mindtrace_retrain_jobs_total",
        "prediction log written / dropped": "mindtrace_prediction_log_dropped_total",
        "rollout traffic by version and role": "mindtrace_rollout_requests_total",
        "rollout candidate": "mindtrace_rollout_candidate",
        "rollout decisions": "mindtrace_rollout_decisions_total",
    }
    for title, needle in promised.items():
        found = [t for t in exprs if title in t.lower()]
        assert found, f"no panel titled like {title!r}"
        assert needle in exprs[found[0]], f"{found[0]!r} does not query {needle}"
    for expr in exprs.values():  # read by the tokenizer, so the slow test below checks every name
        parse_query(expr)

    drift = next(p for p in shown if "drift p-value" in p["title"].lower())
    steps = drift["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert 0.05 in [s["value"] for s in steps], "the alpha 0.05 line"
    assert drift["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"].startswith("line")


# --- against a real service ---------------------------------------------------------------------------------


@dataclass
class Exposed:
    """What a scrape of /metrics holds: each sample name with the label names it carries, and the samples."""

    labels: dict[str, set[str]]
    samples: list[Sample]
    log: str = ""  # the server's warnings and errors, for a failed assertion's message

    @classmethod
    def parse(cls, text: str) -> Exposed:
        labels: dict[str, set[str]] = {}
        samples = [sample for family in text_string_to_metric_families(text) for sample in family.samples]
        for sample in samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
        return cls(labels, samples)

    def values(self, name: str, label: str) -> dict[str, float]:
        """The values of the samples ``name`` by their ``label``."""
        return {s.labels[label]: s.value for s in self.samples if s.name == name}

    def family_of(self, name: str) -> str | None:
        """An exposed sample of the family ``name`` belongs to, if ``name`` itself is not exposed."""
        base = re.sub(r"_(bucket|sum|count|total|created)$", "", name)
        return next((n for n in sorted(self.labels) if re.fullmatch(rf"{re.escape(base)}(_\w+)?", n)), None)

    def problems(self, where: str, expr: str) -> list[str]:
        query = parse_query(expr)
        found: list[str] = []
        for metric, matched in query.metrics.items():
            if metric not in self.labels:
                near = self.family_of(metric)
                found.append(f"{where}: {metric} is not exported" + (f" (but {near} is)" if near else ""))
                continue
            found += [f"{where}: {metric} has no label {label!r}" for label in matched - self.labels[metric]]
        carried = set().union(*(self.labels.get(m, set()) for m in query.metrics))
        if all(m in self.labels for m in query.metrics):
            found += [
                f"{where}: no metric of the query has the label {lab!r}" for lab in query.grouping - carried
            ]
        return found


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory, real_mnist_dir: Path) -> Exposed:
    """/metrics of a real service serving a tiny model, after good, rejected and unauthorised predictions,
    a finished retraining job and a canary rollout stopped by hand."""
    root = tmp_path_factory.mktemp("deploy")
    env = service_env(
        root / "home", real_mnist_dir.parent, root / "bentoml",
        MINDTRACE_API_TOKEN=API_TOKEN, MINDTRACE_INFERENCE_TOKEN=INFERENCE_TOKEN,
    )  # fmt: skip
    assert train(env, root, "--policy", "always")["promoted"] is True
    with served(env, root / "serve.log") as (url, _):

        def post(path: str, body: object, headers: dict[str, str] | None = None) -> int:
            return requests.post(url + path, json=body, headers=headers, timeout=60).status_code

        assert [post("/inference", {"image": EXAMPLE_IMAGE}, INFER) for _ in range(5)] == [200] * 5
        assert post("/inference/batch", {"images": [EXAMPLE_IMAGE] * 3}, INFER) == 200
        assert post("/inference", {"image": "not base64!"}, INFER) == 400
        assert post("/inference", {"image": EXAMPLE_IMAGE}) == 401
        submitted = requests.post(url + "/retrain", json=TINY_RETRAIN, headers=ADMIN, timeout=60)
        assert submitted.status_code == 202, submitted.text
        job = submitted.json()["job_id"]
        wait_for(
            lambda: requests.get(f"{url}/jobs/{job}", timeout=30).json()["status"] in ("succeeded", "failed"),
            300, "the retraining job to finish", interval=1,
        )  # fmt: skip

        def counted() -> bool:
            text = requests.get(url + "/metrics", timeout=30).text
            return sum(Exposed.parse(text).values("mindtrace_retrain_jobs_total", "outcome").values()) == 1

        wait_for(counted, 30, "the finished job to be counted")

        # A canary of the first version (the job promoted the second), answering until it is seen, then
        # stopped by hand: the rollout series exist only once a rollout has run.
        rollout = f"{url}/registry/models/mnist-mlp/rollout"
        started = requests.post(rollout, json={"version": "1", "percent": 50}, headers=ADMIN, timeout=60)
        assert started.status_code == 202, started.text

        def canary_answered() -> bool:
            body = {"image": EXAMPLE_IMAGE}
            answer = requests.post(url + "/inference", json=body, headers=INFER, timeout=60)
            return answer.json()["model"]["version"] == "1"

        wait_for(canary_answered, 120, "the canary to answer", interval=0.2)
        assert requests.delete(rollout, headers=ADMIN, timeout=60).status_code == 200

        # The monitoring gauges are set by the leader's refresh (every 15 s) and by GET /monitoring: asked
        # for here, so that the scrape does not depend on how long the steps above took.
        assert requests.get(url + "/monitoring", headers=ADMIN, timeout=60).status_code == 200

        def complete() -> str | None:
            text = requests.get(url + "/metrics", timeout=30).text
            decisions = Exposed.parse(text).values("mindtrace_rollout_decisions_total", "outcome")
            return text if decisions.get("aborted") == 1 and "mindtrace_drift_detected" in text else None

        metrics = wait_for(complete, 30, "the stopped rollout to be counted and the monitoring gauges set")
    (root / "metrics.txt").write_text(metrics)
    exposed = Exposed.parse(metrics)
    exposed.log = warnings_in(root / "serve.log")
    return exposed


@pytest.mark.slow
def test_the_service_exports_bentomls_request_metrics_with_the_labels_the_queries_use(scraped):
    for name in ("bentoml_service_request_total", "bentoml_service_request_duration_seconds_bucket"):
        assert {"endpoint", "http_response_code", "service_name"} <= scraped.labels[name], name
    assert "le" in scraped.labels["bentoml_service_request_duration_seconds_bucket"]


@pytest.mark.slow
def test_outcome_counters_start_at_zero_so_that_increase_sees_their_first_event(scraped):
    decisions = scraped.values("mindtrace_rollout_decisions_total", "outcome")
    assert decisions == {"promoted": 0, "rolled-back": 0, "aborted": 1}
    swaps = scraped.values("mindtrace_model_swaps_total", "outcome")
    assert swaps["failed"] == 0 and swaps["swapped"] >= 1, scraped.log
    assert scraped.values("mindtrace_retrain_jobs_total", "outcome") == {"succeeded": 1, "failed": 0}


@pytest.mark.slow
@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_and_label_queried_is_exported_by_a_real_service(scraped, source):
    exprs = dashboard_exprs() if source == "dashboard" else alert_exprs()
    problems = [problem for where, expr in exprs.items() for problem in scraped.problems(where, expr)]
    assert not problems, "\n".join(problems)
