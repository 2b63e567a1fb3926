"""The rollout benchmark's own arithmetic and reports, without a server: the order of each round's points,
the medians and ratios of made-up wrk points, and the tables they print. (A real run trains two models and
takes minutes: ``python -m benchmarks rollout``; its docstring examples run in test_bench_serve.py.)"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from benchmarks.__main__ import build_parser
from benchmarks.rollout import (
    OFF,
    SHADOW,
    TARGET_P99_RATIO,
    RolloutOptions,
    ShadowCheck,
    check_digits,
    markdown_table,
    ratios,
    results_table,
    round_order,
    round_ratios,
    run_rollout_benchmark,
    shadows_table,
    write_results,
)
from benchmarks.serve import Point, medians
from benchmarks.wrk import WrkResult
from mindtrace.train_config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def _point(round_: int, scenario: str, p99: float, requests: int, wrk_cpu: float = 0.2) -> Point:
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": 0}
    result = WrkResult(requests, 10.0, requests * 300, errors, p99 / 2, p99 * 0.7, p99, p99 * 1.5, wrk_cpu)
    return Point("mindtrace", scenario, 32, round_, 1, result, 1.8, 700.0, 650.0, 660.0)


def _results(points: list[Point]) -> dict:
    rows = sorted(medians(points), key=lambda r: (OFF, SHADOW).index(r["scenario"]))
    found = ratios(rows)
    check = ShadowCheck(1, "r1", 2, 200, 200, 200, 23, "", "running", 40_250, 40_250, 1.0, 0.98, 40_250, 3.1,
                        2.0, 0.0, 40_000)  # fmt: skip
    return {
        "options": {
            k: str(v) if isinstance(v, Path) else v for k, v in asdict(RolloutOptions(Path("o"))).items()
        },
        "medians": rows,
        "ratios": found,
        "round_ratios": round_ratios([asdict(p) for p in points]),
        "target": {"p99_ratio_at_most": TARGET_P99_RATIO, "met": found["p99"] <= TARGET_P99_RATIO},
        "shadows": [asdict(check)],
        "clients_saw_only_the_champion": True,
        "wrk_bound": any(r["wrk_bound"] for r in rows),
        "warnings": [],
    }


def test_each_position_of_a_round_gets_the_shadow_once_in_three_rounds():
    orders = [round_order(r) for r in (1, 2, 3)]
    assert all(Counter(o) == {OFF: 2, SHADOW: 1} for o in orders)
    assert sorted(o.index(SHADOW) for o in orders) == [0, 1, 2]


def test_medians_ratios_and_round_ratios_of_made_up_points():
    points = []
    for round_, order in ((1, round_order(1)), (2, round_order(2)), (3, round_order(3))):
        for condition in order:
            points += [_point(round_, condition, 24.0 if condition == SHADOW else 20.0 + round_, 30_000)]
    results = _results(points)
    off, shadow = results["medians"]
    assert (off["scenario"], len(off["rps_each"]), shadow["scenario"], len(shadow["rps_each"])) == (
        OFF, 6, SHADOW, 3,
    )  # fmt: skip
    assert off["p99_ms"] == 22.0 and shadow["p99_ms"] == 24.0
    assert results["ratios"]["p99"] == pytest.approx(24 / 22) and results["ratios"]["rps"] == 1.0
    assert [r["p99"] for r in results["round_ratios"]] == [
        round(24 / 21, 3),
        round(24 / 22, 3),
        round(24 / 23, 3),
    ]
    assert results["target"]["met"] and not results["wrk_bound"]


def test_the_tables_print_the_ratio_the_verdict_and_a_busy_generator(tmp_path):
    points = [_point(1, OFF, 20.0, 40_000), _point(1, SHADOW, 30.0, 30_000, wrk_cpu=0.7)]
    results = _results(points)
    console = Console(record=True, width=250)
    console.print(results_table(results))
    console.print(shadows_table(results))
    text = console.export_text()
    assert "1.50x" in text and "0.75x" in text and "NOT met" in text and "(!)" in text
    assert "40,250" in text and "98.00%" in text
    markdown = markdown_table(results)
    assert "| shadow / off |  | 0.75x |" in markdown and "p99 shadow / off = 1.50x" in markdown
    path = write_results(results, tmp_path)
    assert path.name == "rollout.json" and (tmp_path / "rollout.md").read_text() == markdown


def test_the_check_sends_the_digits_where_the_versions_differ_first():
    champion, candidate = np.array([3, 1, 4, 1, 5]), np.array([3, 7, 4, 1, 9])
    assert check_digits(champion, candidate, 7) == [1, 4, 0, 2, 3, 1, 4]
    assert check_digits(champion, champion, 2) == [0, 1]


def test_the_command_line_defaults_and_bad_options():
    args = build_parser().parse_args(["rollout"])
    assert (args.connections, args.seconds, args.rounds, args.workers, args.epochs) == (32, 10, 3, 2, None)
    assert (args.out, args.work) == ("bench-out/rollout", "bench-out/work-rollout")
    with pytest.raises(ValueError, match="at least 1"):
        run_rollout_benchmark(RolloutOptions(out=Path("out"), connections=0), TrainConfig(), root=ROOT)
    with pytest.raises(ValueError, match="--percent"):
        run_rollout_benchmark(RolloutOptions(out=Path("out"), percent=0), TrainConfig(), root=ROOT)
