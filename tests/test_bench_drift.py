"""The drift benchmark end to end, in miniature: a small model trained for one epoch, few windows per shift.

What is checked is the shape of what it writes (every shift, every window size, the JSON and the chart),
that the shift no detector could miss (inverted polarity) is caught in every window of 1000, and that the
null pools are not flagged more often than the detector's level allows, with a tolerance for few trials.
"""

from __future__ import annotations

import json

import pytest
from scipy import stats

from benchmarks.__main__ import main
from benchmarks.drift import FASHION_DIR, FASHION_IMAGES, TARGET_FALSE_POSITIVES

TRIALS, NULL_TRIALS = 3, 20
WINDOWS = [100, 1000]


def allowed_false_positives(trials: int, rate: float, risk: float = 0.01) -> int:
    """The most false positives in ``trials`` windows that a detector at exactly ``rate`` exceeds with
    probability below ``risk``: a bound that a calibrated detector fails once in 100 runs at most.

    >>> allowed_false_positives(20, 0.05)
    4
    """
    return int(stats.binom.ppf(1 - risk, trials, rate))


@pytest.mark.slow
def test_bench_drift_writes_every_shift_and_catches_the_obvious_one(mnist_home, tmp_path):
    out = tmp_path / "drift"
    argv = [
        "drift", "--out", str(out), "--trials", str(TRIALS), "--null-trials", str(NULL_TRIALS),
        "--windows", *map(str, WINDOWS), "--epochs", "1", "--num-train", "10000", "--hidden-dims", "64",
    ]  # fmt: skip
    assert main(argv) == 0

    results = json.loads((out / "drift.json").read_text())
    assert (out / "drift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["windows"] == WINDOWS and results["target_window"] == 1000
    assert results["reference"]["size"] == 10_000 and results["model"]["dim"] == [784, 64, 10]
    shifts = {s["name"]: s for s in results["shifts"]}
    expected = {
        "unshifted", "control (i.i.d.)", "rotation 10°", "rotation 40°", "rotation 90°", "noise σ=25",
        "noise σ=60", "noise σ=100", "blur σ=1.5", "inverted", "no 0s",
    }  # fmt: skip
    if (FASHION_DIR / FASHION_IMAGES).is_file():
        expected.add("Fashion-MNIST")
    assert set(shifts) == expected
    assert [s["name"] for s in results["shifts"]][:2] == ["unshifted", "control (i.i.d.)"]

    for name, shift in shifts.items():
        trials = NULL_TRIALS if shift["null"] else TRIALS
        assert shift["null"] == (name in ("unshifted", "control (i.i.d.)")), name
        assert [r["window"] for r in shift["results"]] == WINDOWS, name
        for row in shift["results"]:
            assert row["trials"] == len(row["p_values"]) == trials, name
            assert row["detected"] == sum(p < results["detector"]["alpha"] for p in row["p_values"]), name
            assert row["rate"] == row["detected"] / trials and 0 <= row["median_p_value"] <= 1, name
            assert 0 < row["verdict_ms_median"] <= row["verdict_ms_max"], name
        assert shift["pool"] >= max(WINDOWS) and 0 < shift["confidence"] <= 1, name
        assert (shift["accuracy"] is None) == (name == "Fashion-MNIST"), name
        assert shift["met"] is None if shift["target"] is None else isinstance(shift["met"], bool), name
    assert shifts["unshifted"]["pool"] == 5000  # the validation split: held out from training and reference
    assert shifts["no 0s"]["pool"] < 5000
    assert shifts["rotation 10°"]["target"] is None and shifts["noise σ=25"]["target"] is None

    inverted = next(r for r in shifts["inverted"]["results"] if r["window"] == 1000)
    assert inverted["detected"] == TRIALS
    assert shifts["inverted"]["met"] is True
    bound = allowed_false_positives(NULL_TRIALS, TARGET_FALSE_POSITIVES)
    for name in ("unshifted", "control (i.i.d.)"):
        for row in shifts[name]["results"]:
            assert row["detected"] <= bound, (name, row["window"], row["p_values"])
