"""The benchmark commands: ``python -m benchmarks serve|train|formats|drift|predlog|rollout`` (also
``mindtrace bench ...``).

>>> main(["serve", "--out", "benchmarks/results", "--markdown", "BENCHMARKS.md"])   # doctest: +SKIP
>>> main(["drift", "--out", "benchmarks/results"])   # doctest: +SKIP
>>> main(["serve", "--servers", "mindtrace", "fastapi", "--soak-seconds", "0"])   # doctest: +SKIP
>>> main(["rollout", "--rounds", "3", "--seconds", "10"])   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.drift import FASHION_DIR, FASHION_IMAGES
from benchmarks.predlog import PREDLOG_FORMATS
from benchmarks.servers import DEFAULT_SERVERS, SERVERS
from mindtrace.cli.main import add_train_options, quiet_output, train_config_from_args
from mindtrace.cli.output import console
from mindtrace.utils import available_cores


def build_parser(prog: str = "python -m benchmarks") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Benchmarks that print figures (a checkout only)."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="BENCHMARK")

    b = commands.add_parser("train", help="full-MNIST training: accuracy, epochs, seconds, images per second")
    add_train_options(b)
    b.add_argument("--repeats", type=int, default=1, help="runs with seeds seed, seed+1, ...")
    b.add_argument("--json-out", default=None, help="also write the figures to this JSON file")
    b.set_defaults(func=cmd_train)

    b = commands.add_parser("formats", help="forward-pass time of a model as each serving option loads it")
    b.add_argument("--repeats", type=int, default=2000, help="timed calls per option and batch size")
    b.set_defaults(func=cmd_formats)

    b = commands.add_parser(
        "serve",
        help="this service beside FastAPI and mlflow models serve, driven by wrk",
        description=(
            "Run it in a mindtrace checkout with wrk installed. It first trains a model (the training "
            "options below) in a scratch home under --work: your registry and model store are untouched."
        ),
    )
    b.add_argument("--out", default="bench-out/serve", help="folder for results.json and the charts")
    b.add_argument("--work", default="bench-out/work", help="scratch home, model store, bodies and logs")
    b.add_argument("--markdown", default=None, help="write the report here (default: OUT/report.md)")
    b.add_argument(
        "--servers", nargs="+", choices=SERVERS, default=list(DEFAULT_SERVERS), help="servers to measure"
    )
    b.add_argument(
        "--connections", type=int, nargs="+", default=[8, 32, 64], help="wrk connections per point"
    )
    b.add_argument("--seconds", type=int, default=10, help="length of each point (whole seconds)")
    b.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the report takes their median")
    b.add_argument("--warmup-seconds", type=int, default=3, help="unrecorded load on each server first")
    b.add_argument("--digits", type=int, default=1000, help="MNIST test digits the requests cycle through")
    b.add_argument("--batch-images", type=int, default=256, help="images per batch request (1: no batches)")
    b.add_argument("--batch-connections", type=int, default=8, help="connections sending batch requests")
    b.add_argument("--no-retrain", action="store_true", help="skip the point during a retraining job")
    b.add_argument(
        "--soak-seconds", type=int, default=600, help="length of the long run of mixed traffic (0: skip it)"
    )
    b.add_argument("--cold-starts", type=int, default=3, help="timed launches of each server (0: none)")
    b.add_argument("--workers", type=int, default=0, help="worker processes per server (default: one a core)")
    add_train_options(b)
    b.set_defaults(func=cmd_serve)

    b = commands.add_parser(
        "drift",
        help="the drift detector: detection rate per input shift and window size, false positives",
        description=(
            "Trains a model (the training options below; --epochs defaults to 2 here) with checkpoints in a "
            "temporary folder, builds its drift reference on the MNIST test set and feeds the detector "
            "windows of held-out digits, shifted and unshifted. Writes OUT/drift.json and OUT/drift.png."
        ),
    )
    b.add_argument("--out", default="bench-out/drift", help="folder for drift.json and drift.png")
    b.add_argument("--windows", type=int, nargs="+", default=[100, 500, 1000], help="window sizes")
    b.add_argument("--trials", type=int, default=20, help="random windows per shift and window size")
    b.add_argument(
        "--null-trials", type=int, default=200, help="random windows per window size of the unshifted pools"
    )
    b.add_argument("--alpha", type=float, default=0.05, help="the detector's significance level")
    b.add_argument("--knock-out", type=int, default=0, help="the digit the label-shift pool leaves out")
    b.add_argument(
        "--fashion-dir", default=str(FASHION_DIR), help=f"folder holding Fashion-MNIST's {FASHION_IMAGES}"
    )
    add_train_options(b)
    b.set_defaults(func=cmd_drift)

    b = commands.add_parser(
        "predlog",
        help="the prediction log's format: SQLite beside Parquet, with concurrent writer processes",
        description=(
            "Each format gets the same rows from --writers processes writing batches at once, then is read "
            "(the newest rows of one version) and given feedback labels. Writes OUT/predlog.json."
        ),
    )
    b.add_argument("--out", default="bench-out/predlog", help="folder for predlog.json")
    b.add_argument("--work", default=None, help="folder for the files written (default: a temporary one)")
    b.add_argument("--rows", type=int, default=200_000, help="rows written in all, per format")
    b.add_argument("--writers", type=int, default=2, help="concurrent writer processes")
    b.add_argument("--batch", type=int, default=1000, help="rows per flush (one transaction or file)")
    b.add_argument("--read", type=int, default=1000, help="newest rows of one version read back")
    b.add_argument("--feedback", type=int, default=1000, help="feedback labels applied by prediction id")
    b.add_argument("--repeats", type=int, default=5, help="timed reads and feedback calls; the median counts")
    b.add_argument("--formats", nargs="+", choices=PREDLOG_FORMATS, default=list(PREDLOG_FORMATS))
    b.set_defaults(func=cmd_predlog)

    b = commands.add_parser(
        "rollout",
        help="the cost of a shadow rollout: the champion's latency and throughput with a shadow on and off",
        description=(
            "Trains two versions (the training options below; --epochs defaults to 1 here) in a scratch home "
            "under --work, serves the first, and drives it with wrk with a shadow rollout of the second on "
            "and off in turn. Writes OUT/rollout.json and OUT/rollout.md. Needs wrk."
        ),
    )
    b.add_argument("--out", default="bench-out/rollout", help="folder for rollout.json and rollout.md")
    b.add_argument("--work", default="bench-out/work-rollout", help="scratch home, model store, bodies, logs")
    b.add_argument("--connections", type=int, default=32, help="wrk connections of every point")
    b.add_argument("--seconds", type=int, default=10, help="length of each point (whole seconds)")
    b.add_argument(
        "--rounds", type=int, default=3, help="rounds of off, shadow, off (rotated); medians count"
    )
    b.add_argument("--warmup-seconds", type=int, default=3, help="unrecorded load first, shadow off then on")
    b.add_argument("--digits", type=int, default=1000, help="MNIST test digits the requests cycle through")
    b.add_argument("--workers", type=int, default=2, help="the service's worker processes")
    b.add_argument("--checks", type=int, default=200, help="answers read one by one after each shadow point")
    b.add_argument("--percent", type=float, default=100.0, help="share of requests the candidate shadows")
    add_train_options(b)
    b.set_defaults(func=cmd_rollout)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from benchmarks.offline import bench_train

    return bench_train(train_config_from_args(args), repeats=args.repeats, json_out=args.json_out)


def cmd_formats(args: argparse.Namespace) -> int:
    from benchmarks.offline import bench_model_formats

    return bench_model_formats(repeats=args.repeats)


def cmd_serve(args: argparse.Namespace) -> int:
    from rich.markdown import Markdown

    from benchmarks.report import targets_table, write_report
    from benchmarks.serve import BenchOptions, run_benchmark

    if min(args.seconds, args.rounds, *args.connections) < 1:
        raise ValueError("--seconds, --rounds and --connections must be at least 1")
    options = BenchOptions(
        out=Path(args.out).resolve(),
        work=Path(args.work).resolve(),
        servers=tuple(args.servers),
        connections=tuple(args.connections),
        seconds=args.seconds,
        rounds=args.rounds,
        warmup_seconds=args.warmup_seconds,
        digits=args.digits,
        batch_images=args.batch_images,
        batch_connections=args.batch_connections,
        retrain=not args.no_retrain,
        soak_seconds=args.soak_seconds,
        cold_starts=args.cold_starts,
        workers=args.workers or available_cores(),
    )
    command = f"{args.prog} serve {shlex.join(args.argv)}".strip()
    results = run_benchmark(options, train_config_from_args(args), command)
    report = write_report(results, options.out, Path(args.markdown).resolve() if args.markdown else None)
    console.print(Markdown(targets_table(results)))
    console.print(f"results: {options.out / 'results.json'}; report: {report}", highlight=False)
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    from benchmarks.drift import (
        DEFAULT_EPOCHS,
        DriftOptions,
        results_table,
        run_drift_benchmark,
        write_results,
    )

    if args.epochs is None:  # the detector needs a working classifier, not the best one
        args.epochs = DEFAULT_EPOCHS
    config = train_config_from_args(args)
    options = DriftOptions(
        out=Path(args.out).resolve(),
        windows=tuple(args.windows),
        trials=args.trials,
        null_trials=args.null_trials,
        alpha=args.alpha,
        knock_out=args.knock_out,
        fashion_dir=Path(args.fashion_dir),
        seed=config.seed,
    )
    command = f"{args.prog} drift {shlex.join(args.argv)}".strip()
    results = run_drift_benchmark(options, config, command=command)
    console.print(results_table(results))
    json_path, chart = write_results(results, options.out)
    console.print(
        f"results: {json_path}; chart: {chart} ({results['seconds']['total']:.0f} s)", highlight=False
    )
    return 0


def cmd_predlog(args: argparse.Namespace) -> int:
    from benchmarks.predlog import PredlogOptions, results_table, run_predlog_benchmark, write_results

    options = PredlogOptions(
        rows=args.rows,
        writers=args.writers,
        batch=args.batch,
        read=args.read,
        feedback=args.feedback,
        repeats=args.repeats,
        formats=tuple(args.formats),
    )
    command = f"{args.prog} predlog {shlex.join(args.argv)}".strip()
    results = run_predlog_benchmark(options, Path(args.work).resolve() if args.work else None, command)
    console.print(results_table(results))
    json_path = write_results(results, Path(args.out).resolve())
    console.print(f"results: {json_path}", highlight=False)
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    from benchmarks.rollout import (
        DEFAULT_EPOCHS,
        RolloutOptions,
        results_table,
        run_rollout_benchmark,
        shadows_table,
    )

    if args.epochs is None:  # two real versions that differ a little; their accuracy is not the point
        args.epochs = DEFAULT_EPOCHS
    options = RolloutOptions(
        out=Path(args.out).resolve(),
        work=Path(args.work).resolve(),
        connections=args.connections,
        seconds=args.seconds,
        rounds=args.rounds,
        warmup_seconds=args.warmup_seconds,
        digits=args.digits,
        workers=args.workers,
        checks=args.checks,
        percent=args.percent,
    )
    command = f"{args.prog} rollout {shlex.join(args.argv)}".strip()
    results = run_rollout_benchmark(options, train_config_from_args(args), command)
    console.print(results_table(results))
    console.print(shadows_table(results))
    console.print(
        f"results: {options.out / 'rollout.json'}, {options.out / 'rollout.md'} ({results['minutes']} min)",
        highlight=False,
    )
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "python -m benchmarks") -> int:
    """Run one benchmark command; ``mindtrace bench`` calls this with its own ``prog``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    args.prog, args.argv = prog, argv[1:]  # the report prints the exact command
    quiet_output()
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:  # bad options, no checkout, no wrk
        console.print(f"[red]error: {exc}[/]", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
