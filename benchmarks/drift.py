"""``python -m benchmarks drift``: does the drift detector catch shifted inputs, and leave unshifted ones be?

The detector under test is :func:`mindtrace.monitoring.drift.detect`, called as the service calls it: a
reference of the model's probabilities, and a live window of the probabilities the service would log for
its newest requests. Only the reference set differs from the service's (``build_reference`` takes the
whole MNIST test set): here it is a seeded random half of the test set, so that the other half can be live
data that differs from the reference by chance alone.

A run, in order:

1. Train a model with the project's training code (``mindtrace.train.train``; checkpoints in a temporary
   folder, nothing registered) for a couple of epochs: the detector only needs a working classifier.
2. Split the 10,000 MNIST test digits at random (seeded; :func:`split_test_set`) into two halves of 5,000.
   The reference is the model's probabilities on the first half, through the same pixel pipeline as
   ``build_reference`` (:func:`mindtrace.models.net.probabilities` on uint8 pixels). A random half, not the
   first 5,000: the test file's first 5,000 digits and its last 5,000 come from different writers.
3. Make the pools of live images, as uint8 28x28 pixels before the model. The other half of the test set is
   the unshifted pool (its false-positive rate is the detector's calibration) and the base every shift is
   applied to: rotation (10, 40, 90 degrees), Gaussian noise (three levels), blur, inverted polarity, one
   class knocked out. So a shifted window and an unshifted one differ only by the shift. Fashion-MNIST's
   test images are the out-of-distribution pool. One more pool is reported but not judged: the training
   run's validation split ("other writers"), digits from MNIST's training file that the model never trained
   on. The training and test files were written by different people, and the detector sees it: that row is
   flagged more often than alpha, which says a reference should come from data like the live traffic.
4. Run every pool through the model once, with ONNX Runtime as the service does (the exported graph).
5. For each pool and window size, ``trials`` windows of that many images drawn at random (without
   replacement within a window) are handed to ``detect``; the detection rate is the share flagged, which for
   the null pools (unshifted, other writers) is the false-positive rate, measured on ``null_trials`` windows.

The shifts are applied to the model's input pixels, after the service's preprocessing
(``mindtrace/preprocess.py``). That preprocessing inverts dark-on-light images, so an inverted digit sent to
``/inference`` as an image is turned back before the model. The "inverted" row measures the detector on
inputs that reach the model inverted (a client sending pre-normalised tensors over the V2 protocol, say),
not what ``/inference`` would see for an inverted image.

The targets (at window 1000: false positives <= 5 % on the unshifted pool, detection >= 90 % for every shift
but the two meant to be hard, the smallest rotation and the lightest noise) are reported, never asserted.

>>> int(rotate(np.eye(28, dtype=np.uint8)[None] * 255, 90)[0].trace())   # now the other diagonal
0
>>> int(invert(np.zeros((1, 28, 28), np.uint8)).max())
255
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from mindtrace.config import Config
from mindtrace.train_config import TrainConfig

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FASHION_IMAGES = "t10k-images-idx3-ubyte.gz"
DEFAULT_EPOCHS = 2  # enough for ~97 % test accuracy in seconds; the detector needs a classifier, not the best
TEST_SIZE = 10_000
TARGET_WINDOW = 1000
TARGET_FALSE_POSITIVES = 0.05
TARGET_DETECTION = 0.90
OTHER_WRITERS = "other writers (MNIST training file)"
CAPTION = (
    "unshifted: the 5,000 test digits not in the reference, the base of every shift; a detection there is a "
    "false positive.\n"
    "other writers: validation digits from MNIST's training file, whose writers are not the test file's; "
    "flagged more often for that reason (a reference should come from data like the live traffic), "
    "reported, not judged.\n"
    "Shifts are applied to the model's input pixels, after the service's preprocessing, which turns "
    "dark-on-light images back: 'inverted' is inputs reaching the model inverted (e.g. pre-normalised "
    "tensors over the V2 protocol), not what /inference would see.\n"
    "Verdict ms: median / max of one detect() call."
)


@dataclass(frozen=True)
class DriftOptions:
    """What a run measures; windows below the service's ``min_window`` (100) get no verdict: refused.

    >>> DriftOptions(out=Path("bench-out/drift")).windows
    (100, 500, 1000)
    """

    out: Path
    windows: tuple[int, ...] = (100, 500, 1000)
    trials: int = 20
    # A false-positive rate near 5 % cannot be told from 10 % in 20 trials: the null pools get more windows.
    null_trials: int = 200
    alpha: float = 0.05
    knock_out: int = 0
    fashion_dir: Path = FASHION_DIR
    seed: int = 42


@dataclass
class Pool:
    """Live images of one kind: pixels [n, 28, 28] uint8, their labels (None for Fashion-MNIST), whether it is
    judged against a target (False: reported as measured), and whether it is a null pool (no shift: every
    detection is a false positive). ``probabilities`` are filled in once, by the model.
    """

    name: str
    description: str
    pixels: np.ndarray
    labels: np.ndarray | None
    target: bool = True
    null: bool = False
    probabilities: np.ndarray = field(default_factory=lambda: np.empty((0, 10), np.float32))


# --- shifts on uint8 pixels [n, 28, 28] ---------------------------------------------------------------------


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def rotate(pixels: np.ndarray, degrees: float) -> np.ndarray:
    """Each image turned ``degrees`` anticlockwise about its centre (bilinear, black outside the frame).

    >>> rotate(np.zeros((2, 28, 28), np.uint8), 40).shape
    (2, 28, 28)
    """
    from scipy import ndimage

    turned = ndimage.rotate(pixels.astype(np.float32), degrees, axes=(2, 1), reshape=False, order=1, cval=0.0)
    return _to_uint8(turned)


def add_noise(pixels: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of standard deviation ``sigma`` (on 0-255) added to every pixel, clipped to 0-255.

    >>> bool(add_noise(np.zeros((1, 28, 28), np.uint8), 60, np.random.default_rng(0)).mean() > 10)
    True
    """
    return _to_uint8(pixels + rng.normal(0.0, sigma, pixels.shape))


def blur(pixels: np.ndarray, sigma: float) -> np.ndarray:
    """Each image blurred by a Gaussian of ``sigma`` pixels (the images are not blurred into each other).

    >>> int(blur(np.pad(np.full((1, 2, 2), 255, np.uint8), ((0, 0), (13, 13), (13, 13))), 1.5).max()) < 255
    True
    """
    from scipy import ndimage

    return _to_uint8(ndimage.gaussian_filter(pixels.astype(np.float32), sigma=(0, sigma, sigma)))


def invert(pixels: np.ndarray) -> np.ndarray:
    """Inverted polarity, 255 - x, on the model's input: the service's preprocessing would undo it for an
    image sent to ``/inference`` (it inverts dark-on-light images), not for a tensor sent over V2."""
    return 255 - pixels


def split_test_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the reference half and the live half of ``n`` test digits: a seeded random split.

    >>> ref, live = split_test_set(10, 0)
    >>> len(ref), len(live), sorted([*ref, *live]) == list(range(10))
    (5, 5, True)
    """
    order = np.random.default_rng([seed, 1]).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :])


def make_pools(
    pixels: np.ndarray,
    labels: np.ndarray,
    options: DriftOptions,
    fashion: np.ndarray | None,
    others: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[Pool]:
    """The unshifted pool (``pixels``: the test digits not in the reference), each shift of it, Fashion-MNIST
    if given, and the informative pool of ``others`` (digits and labels from MNIST's training file) if given.

    >>> options = DriftOptions(Path("."))
    >>> pools = make_pools(np.zeros((20, 28, 28), np.uint8), np.arange(20) % 10, options, None)
    >>> [p.name for p in pools][:4], len(pools[-1].pixels)
    (['unshifted', 'rotation 10°', 'rotation 40°', 'rotation 90°'], 18)
    """
    rng = np.random.default_rng(options.seed)
    kept = labels != options.knock_out
    base = f"{len(pixels):,} held-out MNIST test digits"
    pools = [
        Pool("unshifted", f"{base}, not in the reference", pixels, labels, null=True),
        Pool("rotation 10°", "turned 10° anticlockwise", rotate(pixels, 10), labels, target=False),
        Pool("rotation 40°", "turned 40° anticlockwise", rotate(pixels, 40), labels),
        Pool("rotation 90°", "turned 90° anticlockwise", rotate(pixels, 90), labels),
        Pool("noise σ=25", "Gaussian noise, σ 25 of 255, clipped", add_noise(pixels, 25, rng), labels, False),
        Pool("noise σ=60", "Gaussian noise, σ 60 of 255, clipped", add_noise(pixels, 60, rng), labels),
        Pool("noise σ=100", "Gaussian noise, σ 100 of 255, clipped", add_noise(pixels, 100, rng), labels),
        Pool("blur σ=1.5", "Gaussian blur, σ 1.5 pixels", blur(pixels, 1.5), labels),
        Pool("inverted", "inverted polarity on the model's input, 255 - x", invert(pixels), labels),
    ]
    if fashion is not None:
        pools.append(Pool("Fashion-MNIST", "Fashion-MNIST test images (out of distribution)", fashion, None))
    pools.append(
        Pool(
            f"no {options.knock_out}s",
            f"every digit {options.knock_out} dropped (label shift)",
            pixels[kept],
            labels[kept],
        )
    )
    if others is not None:
        description = "the training run's validation split: MNIST training-file digits, other writers"
        pools.append(Pool(OTHER_WRITERS, description, others[0], others[1], target=False, null=True))
    return pools


def load_fashion(folder: Path) -> np.ndarray | None:
    """Fashion-MNIST's 10,000 test images as uint8 [n, 28, 28], or None when the folder does not hold them."""
    from mindtrace.data.idx import read_idx

    path = Path(folder) / FASHION_IMAGES
    return read_idx(path) if path.is_file() else None


# --- the measurement ---------------------------------------------------------------------------------------


def window_trials(
    reference: Any, probs: np.ndarray, window: int, trials: int, alpha: float, rng: np.random.Generator
) -> dict[str, Any]:
    """``trials`` verdicts of ``detect`` on random windows of ``probs``: the detection rate, the p-values
    and how long a verdict took (the service computes one per version at every monitoring refresh).

    >>> from mindtrace.monitoring.drift import Reference
    >>> ref = Reference(np.random.default_rng(1).dirichlet(np.ones(10), 2000).astype(np.float32), "doc")
    >>> live = np.random.default_rng(2).dirichlet(np.full(10, 0.2), 500)
    >>> window_trials(ref, live, 200, 3, 0.05, np.random.default_rng(3))["rate"]
    1.0
    """
    from mindtrace.monitoring.drift import detect

    if window > len(probs):
        raise ValueError(f"a window of {window} needs at least that many images; the pool has {len(probs)}")
    verdicts, seconds = [], []
    for _ in range(trials):
        live = probs[rng.choice(len(probs), window, replace=False)]
        t0 = time.perf_counter()
        verdicts.append(detect(reference, live, alpha))
        seconds.append(time.perf_counter() - t0)
    detected = sum(v.detected for v in verdicts)
    p_values = [float(v.p_value) for v in verdicts]
    return {
        "window": window,
        "trials": trials,
        "detected": detected,
        "rate": detected / trials,
        "median_p_value": statistics.median(p_values),
        "median_ks_p_value": statistics.median(float(v.ks_p_value) for v in verdicts),
        "median_chi2_p_value": statistics.median(float(v.chi2_p_value) for v in verdicts),
        # Which test fired: the KS tests see confidence move, the chi-square sees the labels move.
        "by_ks": sum(v.detected and v.ks_p_value <= v.chi2_p_value for v in verdicts),
        "verdict_ms_median": 1000 * statistics.median(seconds),
        "verdict_ms_max": 1000 * max(seconds),
        "p_values": p_values,
    }


def _train(config: TrainConfig, settings: Config) -> tuple[Any, dict[str, Any], np.ndarray, np.ndarray]:
    """Train in a throwaway checkpoint folder; the net, its figures and the held-out (validation) digits."""
    from mindtrace.data.fetch import load_mnist_arrays
    from mindtrace.train import train

    with tempfile.TemporaryDirectory(prefix="mindtrace-drift-") as tmp:
        # Checkpoints go to the throwaway folder; the data folder stays the MNIST cache it was.
        data = str(settings["DIR_PATHS"].getpath("DATA"))
        env = {"MINDTRACE__DIR_PATHS__CHECKPOINTS": tmp, "MINDTRACE__DIR_PATHS__DATA": data}
        scratch = Config(env={**os.environ, **env})
        result = train(config, settings=scratch, progress=False)
    dm = result.datamodule
    train_x, train_y, _, _ = load_mnist_arrays(dm.data_dir, dm.spec)
    held_out = dm.split_indices["val"].numpy()
    net = result.model.net.eval()
    return net, result.metrics, train_x[held_out], train_y[held_out].astype(np.int64)


def run_drift_benchmark(
    options: DriftOptions, config: TrainConfig, settings: Config | None = None, command: str = ""
) -> dict[str, Any]:
    """Train, build the reference on half the test set, classify every pool once, then run ``detect`` on
    sampled windows.

    >>> options = DriftOptions(out=Path("bench-out/drift"))                      # doctest: +SKIP
    >>> results = run_drift_benchmark(options, TrainConfig(epochs=2))           # doctest: +SKIP
    >>> results["shifts"][0]["name"], results["shifts"][0]["results"][-1]["rate"]  # doctest: +SKIP
    ('unshifted', 0.05)
    """
    from mindtrace.data.digits import mnist_test_pixels
    from mindtrace.models.net import onnx_bytes, probabilities
    from mindtrace.monitoring.drift import METHOD, Reference
    from mindtrace.runtime import OnnxClassifier

    settings = settings or Config()
    windows = sorted(set(options.windows))
    min_window = _service_min_window()
    if windows[0] < min_window or min(options.trials, options.null_trials) < 1 or not 0 < options.alpha < 1:
        raise ValueError(
            f"windows must be at least the service's min_window ({min_window}), trials at least 1, "
            f"alpha in (0, 1); got windows {windows}, trials {options.trials}/{options.null_trials}, "
            f"alpha {options.alpha}"
        )
    if not 0 <= options.knock_out <= 9:
        raise ValueError(f"--knock-out is a digit, 0 to 9; got {options.knock_out}")
    console = Console()
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    console.print(f"training for {config.epochs} epochs ({config.num_train:,} digits) ...", highlight=False)
    net, metrics, held_x, held_y = _train(config, settings)
    seconds["train"] = time.perf_counter() - started

    t0 = time.perf_counter()
    test_pixels, test_labels = mnist_test_pixels(TEST_SIZE, config=settings)
    in_reference, live = split_test_set(len(test_pixels), options.seed)
    # As build_reference does it, on the reference half only: eager PyTorch on uint8 pixels.
    reference = Reference(
        probabilities(net, test_pixels[in_reference]),
        f"{len(in_reference):,} random MNIST test digits (seed {options.seed})",
    )
    seconds["reference"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    fashion = load_fashion(options.fashion_dir)
    if fashion is None:
        console.print(f"[yellow]no {FASHION_IMAGES} in {options.fashion_dir}: Fashion-MNIST skipped[/]")
    pools = make_pools(test_pixels[live], test_labels[live], options, fashion, (held_x, held_y))
    seconds["shift"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    classify = OnnxClassifier(onnx_bytes(net))  # the service's runtime: live windows are what it would log
    for pool in pools:
        pool.probabilities = classify(pool.pixels)
    seconds["classify"] = time.perf_counter() - t0
    # The reference went through eager PyTorch, the live pools through ONNX Runtime: how far apart they are.
    runtime_gap = float(np.abs(probabilities(net, pools[0].pixels) - pools[0].probabilities).max())

    t0 = time.perf_counter()
    shifts = []
    for i, pool in enumerate(pools):
        # One generator per pool: adding or removing a shift leaves the others' windows as they were.
        rng = np.random.default_rng([options.seed, i])
        trials = options.null_trials if pool.null else options.trials
        rows = [window_trials(reference, pool.probabilities, w, trials, options.alpha, rng) for w in windows]
        predicted = pool.probabilities.argmax(axis=1)
        shifts.append(
            {
                "name": pool.name,
                "description": pool.description,
                "null": pool.null,
                "judged": pool.target,
                "pool": len(pool.pixels),
                "accuracy": None if pool.labels is None else float((predicted == pool.labels).mean()),
                "confidence": float(pool.probabilities.max(axis=1).mean()),
                "target": _target(pool),
                "results": rows,
            }
        )
    seconds["detect"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started

    target_window = TARGET_WINDOW if TARGET_WINDOW in windows else windows[-1]
    for shift in shifts:
        shift["met"] = _met(shift, target_window)
    return {
        "benchmark": "drift",
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": _machine(),
        "model": {
            "dim": config.dim,
            "train_config": config.model_dump(),
            "test_acc": metrics.get("test_acc"),
            "val_acc": metrics.get("val_acc"),
            "runtime": "ONNX Runtime (live windows), eager PyTorch (reference, as build_reference)",
            "runtime_max_abs_diff": runtime_gap,
        },
        "reference": {
            "description": reference.description,
            "size": len(reference.probabilities),
            "split": "np.random.default_rng([seed, 1]).permutation(10000): first half reference, rest live",
            "accuracy": float((reference.probabilities.argmax(axis=1) == test_labels[in_reference]).mean()),
        },
        "detector": {"method": METHOD, "alpha": options.alpha, "service_min_window": min_window},
        "windows": windows,
        "trials": options.trials,
        "null_trials": options.null_trials,
        "seed": options.seed,
        "target_window": target_window,
        "shifts": shifts,
        "seconds": seconds,
    }


def _service_min_window() -> int:
    from mindtrace.monitoring.report import MonitoringSettings

    return MonitoringSettings().min_window


def _target(pool: Pool) -> str | None:
    if not pool.target:
        return None
    return (
        f"false positives <= {TARGET_FALSE_POSITIVES:.0%}"
        if pool.null
        else f"detection >= {TARGET_DETECTION:.0%}"
    )


def _met(shift: dict[str, Any], window: int) -> bool | None:
    """Whether the shift's target is met at ``window``; None when it has no target."""
    if shift["target"] is None:
        return None
    rate = next(r["rate"] for r in shift["results"] if r["window"] == window)
    return rate <= TARGET_FALSE_POSITIVES if shift["null"] else rate >= TARGET_DETECTION


def _machine() -> dict[str, Any]:
    from importlib.metadata import version

    from mindtrace.utils import available_cores

    return {
        "cores": available_cores(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": {p: version(p) for p in ("numpy", "scipy", "torch", "onnxruntime")},
    }


# --- output ------------------------------------------------------------------------------------------------


def _group(shift: dict[str, Any]) -> int:
    """Table sections: 0 the judged null pool, 1 the shifts, 2 the informative null pool."""
    return 1 if not shift["null"] else 0 if shift["target"] else 2


def _rows(results: dict[str, Any]) -> list[list[str]]:
    """The table's cells, shared by the terminal and the Markdown table; ``met`` as pass / FAIL / blank."""
    window = results["target_window"]
    rows = []
    for shift in results["shifts"]:
        cells = [shift["name"], f"{shift['pool']:,}"]
        cells.append("-" if shift["accuracy"] is None else f"{shift['accuracy']:.1%}")
        cells.append(str(shift["results"][0]["trials"]))
        cells += [f"{row['rate']:.0%} ({row['median_p_value']:.2g})" for row in shift["results"]]
        if shift["target"]:
            cells.append(shift["target"])
        else:
            cells.append("informative, not judged" if shift["null"] else "reported as measured")
        met = shift["met"]
        cells.append("" if met is None else "pass" if met else "FAIL")
        at = next(r for r in shift["results"] if r["window"] == window)
        cells.append(f"{at['verdict_ms_median']:,.0f} / {at['verdict_ms_max']:,.0f}")
        rows.append(cells)
    return rows


def _headers(results: dict[str, Any]) -> list[str]:
    window = results["target_window"]
    windows = [f"window {w}" for w in results["windows"]]
    return [
        "live data",
        "pool",
        "model acc.",
        "trials",
        *windows,
        f"target at {window}",
        "",
        f"verdict ms at {window}",
    ]


def _title(results: dict[str, Any]) -> str:
    return (
        f"drift detector ({results['detector']['method']}, alpha {results['detector']['alpha']}): "
        f"share of windows flagged (median p-value); reference: {results['reference']['description']}"
    )


def results_table(results: dict[str, Any]) -> Table:
    """Detection rate (median p-value) per shift and window; on the null rows, the false-positive rate."""
    table = Table(title=_title(results), caption=CAPTION)
    for i, header in enumerate(_headers(results)):
        table.add_column(header, justify="left" if i == 0 or header.startswith("target") else "right")
    shifts = results["shifts"]
    for i, (shift, cells) in enumerate(zip(shifts, _rows(results), strict=True)):
        cells[-2] = {"pass": "[green]pass[/]", "FAIL": "[red]FAIL[/]"}.get(cells[-2], "")
        last = i + 1 == len(shifts) or _group(shifts[i + 1]) != _group(shift)
        table.add_row(*cells, end_section=last)
    return table


def markdown_table(results: dict[str, Any]) -> str:
    """The table of :func:`results_table` as Markdown (for BENCHMARKS.md), title and caption included."""
    headers = _headers(results)
    align = ["---" if i == 0 or h.startswith("target") or not h else "---:" for i, h in enumerate(headers)]
    lines = [f"**{_title(results)}**", "", "| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in _rows(results)]
    lines += ["", *(f"{line}  " for line in CAPTION.splitlines())]
    return "\n".join(lines).rstrip() + "\n"


def draw_chart(results: dict[str, Any], path: Path) -> Path:
    """Detection rate against window size, one line per shift; dashed: the null pools' false positives."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
    for i, shift in enumerate(results["shifts"]):
        xs = [r["window"] for r in shift["results"]]
        ys = [r["rate"] for r in shift["results"]]
        if shift["null"] and shift["target"]:
            ax.plot(xs, ys, "--", color="black", marker="s", label=f"{shift['name']}: false positives")
        elif shift["null"]:
            ax.plot(xs, ys, "--", color="grey", marker="s", label=f"{shift['name']}: flagged (not judged)")
        else:
            ax.plot(xs, ys, marker="o", color=f"C{i % 10}", label=shift["name"])
    ax.axhline(results["detector"]["alpha"], color="grey", linestyle=":", label="alpha")
    ax.axhline(TARGET_DETECTION, color="green", linestyle=":", alpha=0.5, label="detection target")
    ax.set_xscale("log")
    ax.set_xticks(results["windows"], [str(w) for w in results["windows"]])
    ax.minorticks_off()
    ax.set_ylim(-0.03, 1.03)
    ax.set(xlabel="window (predictions)", ylabel="share of windows flagged")
    ax.set_title(
        f"drift detection rate against window size ({results['trials']} windows a shift, "
        f"{results['null_trials']} a null pool)\nreference: {results['reference']['description']}",
        fontsize=9,
        loc="left",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_results(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """``out/drift.json`` and ``out/drift.png``; the folder is created."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "drift.json"
    json_path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return json_path, draw_chart(results, out / "drift.png")
