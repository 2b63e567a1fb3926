"""The parser and the training, data, config and benchmark commands."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import types
import typing
import warnings
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from mindtrace.cli import registry as registry_commands
from mindtrace.cli.output import console, key_value_table, table
from mindtrace.config import Config
from mindtrace.data.fetch import MnistUnavailableError
from mindtrace.registry.errors import RegistryError
from mindtrace.train_config import PromotionPolicy, TrainConfig, TrainRequest


def _add_options(parser: argparse._ActionsContainer, model: type[BaseModel]) -> None:
    """One option per field of a pydantic model, so the CLI can never drift from the config it fills."""
    for name, info in model.model_fields.items():
        annotation = info.annotation
        is_list = typing.get_origin(annotation) is list
        choices = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else None
        kind = typing.get_args(annotation)[0] if is_list else annotation
        if isinstance(kind, types.UnionType) or choices:
            kind = str
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=kind,
            nargs="+" if is_list else None,
            choices=choices,
            default=None,
            help=f"{info.description} (default: {info.default})",
        )


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    _add_options(parser, TrainConfig)
    parser.add_argument(
        "--config",
        dest="config_file",
        help="a JSON, YAML or INI ([train], [promotion]) file of these options",
    )


def _given(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    return {k: getattr(args, k) for k in model.model_fields if getattr(args, k, None) is not None}


def _train_request(args: argparse.Namespace) -> TrainRequest:
    """The [PROMOTION] settings and the config file (if any), overridden by the options given here."""
    base = TrainRequest.from_file(args.config_file).model_dump(exclude_none=True) if args.config_file else {}
    promotion = {
        **PromotionPolicy.from_config().model_dump(),
        **base.pop("promotion", {}),
        **_given(args, PromotionPolicy),
    }
    return TrainRequest.model_validate({**base, **_given(args, TrainConfig), "promotion": promotion})


def _train_config(args: argparse.Namespace) -> TrainConfig:
    return _train_request(args).train_config()


def cmd_train(args: argparse.Namespace) -> int:
    request = _train_request(args)  # bad options fail here, before the slow imports below

    from mindtrace.train import train_and_register

    summary = train_and_register(
        request,
        experiment=args.experiment,
        tracking_uri=args.tracking_uri,
        model=args.model,
        register=not args.no_register,
        track=not args.no_track,
        progress=not args.json,
    )
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        console.print(key_value_table("training finished", summary))
        console.print(f"[bold green]test accuracy: {summary['test_acc']:.2%}[/]")
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from mindtrace.data import MNIST

    dm = MNIST(local_dir=args.local_dir, progress=not args.json)
    dm.prepare_data()
    if args.json:
        print(json.dumps({"data_dir": str(dm.data_dir), "files": dm.provenance}, indent=2))
        return 0
    rows = [(key, record["source"], record["md5"]) for key, record in dm.provenance.items()]
    console.print(table(f"MNIST cache: {dm.data_dir}", ("file", "source", "md5"), rows))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    settings = Config().as_dict()
    if args.json:
        print(json.dumps(settings, indent=2))
        return 0
    for section, values in settings.items():
        console.print(f"[bold][{section}][/]")
        for key, value in values.items():
            console.print(f"  {key} = {value}", highlight=False)
    return 0


def cmd_bench_train(args: argparse.Namespace) -> int:
    from mindtrace.bench import bench_train

    return bench_train(_train_config(args), repeats=args.repeats, json_out=args.json_out)


def cmd_bench_formats(args: argparse.Namespace) -> int:
    from mindtrace.bench import bench_model_formats

    return bench_model_formats(repeats=args.repeats)


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.markdown import Markdown

    from mindtrace.bench.report import targets_table, write_report
    from mindtrace.bench.serve import SERVERS, BenchOptions, run_benchmark
    from mindtrace.utils import available_cores

    unknown = set(args.servers) - set(SERVERS)
    if unknown:
        raise ValueError(f"unknown server(s) {', '.join(sorted(unknown))}; choose from {', '.join(SERVERS)}")
    options = BenchOptions(
        out=Path(args.out),
        servers=tuple(args.servers),
        users=tuple(args.users),
        seconds=args.seconds,
        warmup_seconds=args.warmup_seconds,
        digits=args.digits,
        ceiling_users=args.ceiling_users,
        batch_size=args.batch_images,
        batch_users=args.batch_users,
        retrain=not args.no_retrain,
        soak_seconds=args.soak_seconds,
        workers=args.workers or available_cores(),
    )
    results = run_benchmark(options, _train_config(args))
    report = write_report(
        results, options.out.resolve(), Path(args.markdown).resolve() if args.markdown else None
    )
    console.print(Markdown(targets_table(results)))
    console.print(f"results: {options.out / 'results.json'}; report: {report}", highlight=False)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mindtrace", description="Train, track and serve MNIST digit models."
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log what happens, e.g. which source fed MNIST"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("train", help="train the MLP on MNIST, record it in MLflow, print test accuracy")
    _add_train_options(p)
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: [MLFLOW] EXPERIMENT_NAME)")
    _add_options(p.add_argument_group("promotion gate (default: [PROMOTION] settings)"), PromotionPolicy)
    p.add_argument("--model", default=None, help="registered model (default: [MLFLOW] REGISTERED_MODEL)")
    p.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (default: [MLFLOW] TRACKING_URI)"
    )
    p.add_argument("--no-register", action="store_true", help="record the run, register no version")
    p.add_argument("--no-track", action="store_true", help="record nothing in MLflow")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON, no progress bar")
    p.set_defaults(func=cmd_train)

    registry_commands.add_commands(commands)

    p = commands.add_parser("data", help="the MNIST cache")
    data = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    f = data.add_parser("fetch", help="fill and verify the MNIST cache, show where each file came from")
    f.add_argument("--local-dir", default=None, help="a folder of MNIST IDX files (gzipped or not) to use")
    f.add_argument("--json", action="store_true", help="print the cache's files and sources as JSON")
    f.set_defaults(func=cmd_data_fetch)

    p = commands.add_parser("config", help="show the resolved configuration")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_config)

    p = commands.add_parser("bench", help="benchmarks that print figures")
    bench = p.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")
    b = bench.add_parser("train", help="full-MNIST training: accuracy, epochs, seconds, images per second")
    _add_train_options(b)
    b.add_argument("--repeats", type=int, default=1, help="runs with seeds seed, seed+1, ...")
    b.add_argument("--json-out", default=None, help="also write the figures to this JSON file")
    b.set_defaults(func=cmd_bench_train)
    b = bench.add_parser("formats", help="forward-pass time of a model as each serving option would load it")
    b.add_argument("--repeats", type=int, default=2000, help="timed calls per option and batch size")
    b.set_defaults(func=cmd_bench_formats)
    b = bench.add_parser(
        "serve",
        help="this service beside FastAPI and mlflow models serve under the same Locust load",
        description=(
            "Run it in a mindtrace checkout: it starts service/ and drives load_tests/. It first trains a "
            "model (the training options below) in a scratch home under --out: your registry is untouched."
        ),
    )
    b.add_argument(
        "--out", default="bench-out/serve", help="folder for results.json, the report, charts, logs"
    )
    b.add_argument("--markdown", default=None, help="also write the report here, e.g. BENCHMARKS.md")
    b.add_argument("--servers", nargs="+", default=["mindtrace", "mindtrace-nobatch", "fastapi", "mlflow"])
    b.add_argument("--users", type=int, nargs="+", default=[1, 8, 32, 64], help="concurrent users per point")
    b.add_argument("--seconds", type=float, default=20, help="length of each measured point")
    b.add_argument(
        "--warmup-seconds", type=float, default=3, help="unrecorded load before each server's points"
    )
    b.add_argument("--digits", type=int, default=1000, help="MNIST test digits the users cycle through")
    b.add_argument("--ceiling-users", type=int, default=32, help="users for the no-op, retrain and long runs")
    b.add_argument("--batch-images", type=int, default=256, help="images per batch request (1: no batch run)")
    b.add_argument("--batch-users", type=int, default=8, help="users sending batch requests")
    b.add_argument("--no-retrain", action="store_true", help="skip the run during a retraining job")
    b.add_argument("--soak-seconds", type=float, default=300, help="length of the long run (0: skip it)")
    b.add_argument(
        "--workers", type=int, default=0, help="worker processes per server (default: one per core)"
    )
    _add_train_options(b)
    b.set_defaults(func=cmd_bench_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(message)s")
    # Lightning sets its own level when imported; its hardware banner and tips come from this child logger.
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(level)
    # Lightning 2.6 on torch 2.13 warns about its own use of a torch API; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    try:
        return args.func(args)
    except MnistUnavailableError as exc:
        console.print(f"[red]{exc}[/]", highlight=False)
        return 1
    except ValidationError as exc:
        for err in exc.errors():
            console.print(f"[red]invalid {'.'.join(map(str, err['loc'])) or 'config'}: {err['msg']}[/]")
        return 2
    except (ValueError, FileNotFoundError) as exc:  # bad input, including an invalid registry query
        console.print(f"[red]error: {exc}[/]", highlight=False)
        return 2
    except RegistryError as exc:  # unknown model, version or alias; an unreachable registry
        console.print(f"[red]error: {exc}[/]", highlight=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
