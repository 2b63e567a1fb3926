"""The parser and the training, data, config and benchmark commands."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import types
import typing
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from mindtrace.cli import monitor as monitor_command
from mindtrace.cli import registry as registry_commands
from mindtrace.cli import rollout as rollout_commands
from mindtrace.cli.output import console, key_value_table, table
from mindtrace.config import Config
from mindtrace.data.fetch import MnistUnavailableError
from mindtrace.registry.errors import RegistryError
from mindtrace.train_config import PromotionPolicy, TrainConfig, TrainRequest


def _add_options(parser: argparse._ActionsContainer, model: type[BaseModel]) -> None:
    """One option per field of a pydantic model, so the CLI can never drift from the config it fills."""
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if annotation is bool:
            flag = f"--{name.replace('_', '-')}"
            parser.add_argument(flag, dest=name, action="store_true", default=None, help=info.description)
            continue
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


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """One option per training setting, and ``--config`` for a file of them (``mindtrace train``, the
    benchmarks)."""
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


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The training config that the options of :func:`add_train_options` describe."""
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


def cmd_bench(args: argparse.Namespace) -> int:
    """Hand ``mindtrace bench ...`` to the ``benchmarks`` package of the checkout this runs in.

    The harness is not installed with mindtrace (it lives beside ``service/``); the current folder is put on
    ``sys.path`` when it holds it, as ``python -m benchmarks`` would.
    """
    here = Path.cwd()
    if (here / "benchmarks" / "__init__.py").is_file() and str(here) not in sys.path:
        sys.path.insert(0, str(here))
    try:
        harness = importlib.import_module("benchmarks.__main__")
    except ImportError as exc:
        console.print(
            f"mindtrace bench needs the benchmark harness ({exc}): run it in a mindtrace checkout with "
            "pip install -e '.[bench]'",
            style="red",
            markup=False,
            highlight=False,
        )
        return 2
    return harness.main(args.bench_args, prog="mindtrace bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mindtrace", description="Train, track and serve MNIST digit models."
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log what happens, e.g. which source fed MNIST"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("train", help="train the MLP on MNIST, record it in MLflow, print test accuracy")
    add_train_options(p)
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
    rollout_commands.add_commands(commands)
    monitor_command.add_command(commands)

    p = commands.add_parser("data", help="the MNIST cache")
    data = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    f = data.add_parser("fetch", help="fill and verify the MNIST cache, show where each file came from")
    f.add_argument("--local-dir", default=None, help="a folder of MNIST IDX files (gzipped or not) to use")
    f.add_argument("--json", action="store_true", help="print the cache's files and sources as JSON")
    f.set_defaults(func=cmd_data_fetch)

    p = commands.add_parser("config", help="show the resolved configuration")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_config)

    p = commands.add_parser(
        "bench",
        help="benchmarks: serve, train, formats (in a checkout: python -m benchmarks)",
        add_help=False,  # --help goes to the harness, which knows the options
    )
    # Everything after `bench` is the harness's, options first included (see main).
    p.add_argument("bench_args", nargs=argparse.REMAINDER, metavar="BENCHMARK ...")
    p.set_defaults(func=cmd_bench)
    return parser


def quiet_output(verbose: bool = False) -> None:
    """Logging for a command line (INFO if ``verbose``, else warnings), without noise users cannot act on."""
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(message)s")
    # Lightning sets its own level when imported; its hardware banner and tips come from this child logger.
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(level)
    # Lightning 2.6 on torch 2.13 warns about its own use of a torch API; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.func is not cmd_bench:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if unknown:  # `mindtrace bench --help`: a leading option is not part of the REMAINDER
        args.bench_args = unknown + args.bench_args
    quiet_output(args.verbose)
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
    except OSError as exc:  # a full disk, a folder that cannot be written: said in a line, not a traceback
        console.print(f"[red]error: {exc}[/]", highlight=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
