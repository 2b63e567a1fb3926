"""The drift benchmark end to end, in miniature: a small model trained for one epoch, few windows per shift.

What is checked is the shape of what it writes (every shift, every window size, the JSON, the chart and the
Markdown table), that the reference and the unshifted pool are the two halves of the test set, that the
shift no detector could miss (inverted polarity on the model's input) is caught in every window of 1000, and
that the unshifted pool is not flagged more often than the detector's level allows, with a tolerance for few
trials. The other-writers pool is reported, not judged: nothing is asserted about its rate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from benchmarks.__main__ import main
from benchmarks.drift import (
    FASHION_DIR,
    FASHION_IMAGES,
    OTHER_WRITERS,
    TARGET_FALSE_POSITIVES,
    DriftOptions,
    make_pools,
    markdown_table,
    split_test_set,
)

TRIALS, NULL_TRIALS = 3, 20
WINDOWS = [100, 1000]
NUM_VAL = 2000


def allowed_false_positives(trials: int, rate: float, risk: float = 0.01) -> int:
    """The most false positives in ``trials`` windows that a detector at exactly ``rate`` exceeds with
    probability below ``risk``: a bound that a calibrated detector fails once in 100 runs at most.

    >>> allowed_false_positives(20, 0.05)
    4
    """
    return int(stats.binom.ppf(1 - risk, trials, rate))


def test_split_is_two_disjoint_seeded_halves():
    ref, live = split_test_set(10_000, 42)
    assert len(ref) == len(live) == 5000 and not set(ref) & set(live)
    again, _ = split_test_set(10_000, 42)
    assert np.array_equal(ref, again) and not np.array_equal(ref, split_test_set(10_000, 43)[0])
    # Random, not the first 5,000: the test file's two halves come from different writers.
    assert 2000 < (ref < 5000).sum() < 3000


def test_every_shift_is_of_the_unshifted_pool_and_other_writers_come_last():
    pixels, labels = np.zeros((30, 28, 28), np.uint8), np.arange(30) % 10
    others = (np.ones((7, 28, 28), np.uint8), np.arange(7))
    pools = make_pools(pixels, labels, DriftOptions(out=Path(".")), None, others)
    assert pools[0].name == "unshifted" and pools[0].null and pools[0].target
    assert pools[-1].name == OTHER_WRITERS and pools[-1].null and not pools[-1].target
    assert pools[-1].pixels is others[0]
    for pool in pools[1:-1]:
        assert not pool.null and np.array_equal(
            pool.labels, labels[labels != 0] if pool.name == "no 0s" else labels
        )
    assert [p.name for p in pools if not p.target] == ["rotation 10°", "noise σ=25", OTHER_WRITERS]
    assert int(next(p for p in pools if p.name == "inverted").pixels.min()) == 255


@pytest.mark.slow
def test_bench_drift_writes_every_shift_and_catches_the_obvious_one(mnist_home, tmp_path):
    out = tmp_path / "drift"
    argv = [
        "drift", "--out", str(out), "--trials", str(TRIALS), "--null-trials", str(NULL_TRIALS),
        "--windows", *map(str, WINDOWS), "--epochs", "1", "--num-train", "10000", "--num-val", str(NUM_VAL),
        "--hidden-dims", "64",
    ]  # fmt: skip
    assert main(argv) == 0

    results = json.loads((out / "drift.json").read_text())
    assert (out / "drift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["windows"] == WINDOWS and results["target_window"] == 1000
    assert results["reference"]["size"] == 5000 and results["model"]["dim"] == [784, 64, 10]
    assert results["model"]["runtime_max_abs_diff"] < 1e-4  # reference (eager) and live (ONNX) agree
    shifts = {s["name"]: s for s in results["shifts"]}
    expected = {
        "unshifted", "rotation 10°", "rotation 40°", "rotation 90°", "noise σ=25", "noise σ=60",
        "noise σ=100", "blur σ=1.5", "inverted", "no 0s", OTHER_WRITERS,
    }  # fmt: skip
    if (FASHION_DIR / FASHION_IMAGES).is_file():
        expected.add("Fashion-MNIST")
    assert set(shifts) == expected
    names = [s["name"] for s in results["shifts"]]
    assert names[0] == "unshifted" and names[-1] == OTHER_WRITERS

    for name, shift in shifts.items():
        trials = NULL_TRIALS if shift["null"] else TRIALS
        assert shift["null"] == (name in ("unshifted", OTHER_WRITERS)), name
        assert [r["window"] for r in shift["results"]] == WINDOWS, name
        for row in shift["results"]:
            assert row["trials"] == len(row["p_values"]) == trials, name
            assert row["detected"] == sum(p < results["detector"]["alpha"] for p in row["p_values"]), name
            assert row["rate"] == row["detected"] / trials and 0 <= row["median_p_value"] <= 1, name
            assert 0 < row["verdict_ms_median"] <= row["verdict_ms_max"], name
        assert shift["pool"] >= max(WINDOWS) and 0 < shift["confidence"] <= 1, name
        assert (shift["accuracy"] is None) == (name == "Fashion-MNIST"), name
        assert shift["met"] is None if shift["target"] is None else isinstance(shift["met"], bool), name
    # The held-out half of the test set is the unshifted pool and the base of every shift.
    for name in expected - {"Fashion-MNIST", "no 0s", OTHER_WRITERS}:
        assert shifts[name]["pool"] == 5000, name
    assert shifts["no 0s"]["pool"] < 5000 and shifts[OTHER_WRITERS]["pool"] == NUM_VAL
    assert shifts["unshifted"]["target"] == "false positives <= 5%"
    for name in ("rotation 10°", "noise σ=25", OTHER_WRITERS):
        assert shifts[name]["target"] is None and shifts[name]["met"] is None, name

    inverted = next(r for r in shifts["inverted"]["results"] if r["window"] == 1000)
    assert inverted["detected"] == TRIALS
    assert shifts["inverted"]["met"] is True
    bound = allowed_false_positives(NULL_TRIALS, TARGET_FALSE_POSITIVES)
    for row in shifts["unshifted"]["results"]:
        assert row["detected"] <= bound, (row["window"], row["p_values"])

    table = markdown_table(results)
    assert table.count("\n| ") == len(names) + 1 and "informative, not judged" in table
