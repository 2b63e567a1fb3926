"""``mindtrace registry ...``: list, show, compare, promote, roll back and import model versions.

Every command goes through :class:`mindtrace.registry.Registry`, the same code the HTTP endpoints use, and
prints a table, or with ``--json`` the same JSON documents the HTTP API returns.
"""

from __future__ import annotations

import argparse

from mindtrace.cli.output import console, key_value_table, print_json, table

_SHOWN_METRICS = ("test_acc", "test_macro_f1", "test_loss")


def _registry(args: argparse.Namespace):
    from mindtrace.registry import Registry

    return Registry(tracking_uri=args.tracking_uri)


def cmd_models(args: argparse.Namespace) -> int:
    models = _registry(args).list_models()
    if args.json:
        print_json(models)
        return 0
    rows = [
        (
            m.name,
            m.num_versions,
            ", ".join(f"{a}={v}" for a, v in sorted(m.aliases.items())),
            ", ".join(m.latest_versions),
            m.updated_at.strftime("%Y-%m-%d %H:%M"),
        )
        for m in models
    ]
    console.print(table("registered models", ("name", "versions", "aliases", "latest", "updated"), rows))
    if not models:
        console.print("no model is registered yet: `mindtrace train` registers one")
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    from mindtrace.registry.schemas import DECISION_TAG

    registry = _registry(args)
    versions = registry.list_versions(args.model, where=args.where, order_by=args.order_by, limit=args.limit)
    if args.json:
        print_json(versions)
        return 0
    rows = [
        (
            v.version,
            ", ".join(v.aliases),
            *(v.metrics.get(m) for m in _SHOWN_METRICS),
            v.tags.get(DECISION_TAG),
            v.params.get("train.hidden_dims", v.params.get("model.dim")),
            v.params.get("train.epochs", v.params.get("trainer.max_epochs")),
            v.created_at.strftime("%Y-%m-%d %H:%M"),
        )
        for v in versions
    ]
    columns = (
        "version",
        "aliases",
        "test acc",
        "macro F1",
        "test loss",
        "gate",
        "hidden",
        "epochs",
        "created",
    )
    console.print(table(f"versions of {registry.model_name(args.model)}", columns, rows))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    info = _registry(args).get_version(args.model, args.ref)
    if args.json:
        print_json(info)
        return 0
    summary = {
        "version": info.version,
        "aliases": ", ".join(info.aliases) or "-",
        "status": info.status,
        "created": info.created_at.isoformat(timespec="seconds"),
        "run id": info.run_id,
        "run status": info.run_status,
        **{f"gate {k.removeprefix('mindtrace.gate.')}": v for k, v in info.tags.items() if "gate." in k},
    }
    console.print(key_value_table(f"{info.name} version {info.version}", summary))
    console.print(key_value_table("metrics", {k: v for k, v in sorted(info.metrics.items())}))
    console.print(key_value_table("params", dict(sorted(info.params.items()))))
    console.print(key_value_table("run tags", dict(sorted(info.run_tags.items()))))
    console.print(key_value_table("artifacts", info.artifacts))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    comparison = _registry(args).compare(args.model, args.a, args.b)
    if args.json:
        print_json(comparison)
        return 0
    rows = [(k, d.a, d.b, d.delta) for k, d in comparison.metrics.items()]
    title = f"{comparison.name}: version {comparison.a} vs {comparison.b}"
    console.print(table(title, ("metric", f"v{comparison.a}", f"v{comparison.b}", "b - a"), rows))
    changed = [(k, a, b) for k, (a, b) in comparison.params_changed.items()]
    console.print(table("parameters that differ", ("param", f"v{comparison.a}", f"v{comparison.b}"), changed))
    console.print(f"same data: {'yes' if comparison.same_data else 'no'}")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    event = _registry(args).set_alias(args.model, args.alias, args.version, reason=args.reason)
    return _print_event(args, event)


def cmd_rollback(args: argparse.Namespace) -> int:
    event = _registry(args).rollback(args.model, args.alias, reason=args.reason)
    return _print_event(args, event)


def cmd_history(args: argparse.Namespace) -> int:
    events = _registry(args).alias_history(args.model, args.alias)
    if args.json:
        print_json(events)
        return 0
    rows = [
        (e.at.strftime("%Y-%m-%d %H:%M:%S"), e.alias, e.action, e.previous, e.version, e.actor, e.reason)
        for e in events
    ]
    columns = ("when (UTC)", "alias", "action", "from", "to", "by", "reason")
    console.print(table("alias history", columns, rows))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from mindtrace.registry import import_version

    result = import_version(args.ref, args.model, _registry(args))
    if args.json:
        print_json(result)
        return 0
    verb = "imported" if result.created else "already in the BentoML store"
    console.print(f"{result.name} version {result.version}: {verb} as [bold]{result.tag}[/]", highlight=False)
    return 0


def _print_event(args: argparse.Namespace, event) -> int:
    if args.json:
        print_json(event)
    elif event.previous == event.version:
        console.print(f"{event.alias} already points at version {event.version}")
    else:
        console.print(f"{event.alias}: version {event.previous or '-'} -> {event.version}", highlight=False)
    return 0


def add_action(
    actions: argparse._SubParsersAction, name: str, func, help: str, model: bool = True
) -> argparse.ArgumentParser:
    """One action of a command that reads the registry (``registry``, ``rollout``), with the options they
    all take: ``--model`` (unless ``model`` is False), ``--tracking-uri`` and ``--json``."""
    a = actions.add_parser(name, help=help, description=help)
    if model:
        a.add_argument(
            "--model", "-m", default=None, help="registered model (default: [MLFLOW] REGISTERED_MODEL)"
        )
    a.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (default: [MLFLOW] TRACKING_URI)"
    )
    a.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a.set_defaults(func=func)
    return a


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``registry`` and its actions to the top-level parser."""
    p = commands.add_parser(
        "registry", help="registered models: list, show, compare, promote, roll back, import"
    )
    actions = p.add_subparsers(dest="registry_command", required=True, metavar="ACTION")

    def action(name: str, func, help: str, model: bool = True) -> argparse.ArgumentParser:
        return add_action(actions, name, func, help, model=model)

    action("models", cmd_models, "list registered models with their aliases and latest versions", model=False)

    a = action("versions", cmd_versions, "list versions with their metrics, filtered and ordered")
    a.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COND",
        help="KEY OP VALUE, repeatable: metrics.test_acc>=0.98, alias=champion, params.train.epochs=3, "
        "tags.mindtrace.gate.decision=promoted",
    )
    a.add_argument(
        "--order-by", default=None, metavar="KEY", help="KEY [asc|desc], e.g. 'metrics.test_acc desc'"
    )
    a.add_argument("--limit", type=int, default=None, help="show at most this many")

    a = action("show", cmd_show, "one version with all its metadata")
    a.add_argument("ref", nargs="?", default="champion", help="version number or alias (default: champion)")

    a = action("compare", cmd_compare, "two versions side by side")
    a.add_argument("a", help="version number or alias")
    a.add_argument("b", help="version number or alias")

    for name, func, help in (
        ("promote", cmd_promote, "point an alias (default: champion) at a version"),
        ("rollback", cmd_rollback, "move an alias back to the version it held before its last move"),
    ):
        a = action(name, func, help)
        if name == "promote":
            a.add_argument("version", help="version number, or an alias such as challenger")
        a.add_argument("--alias", default="champion", help="the alias to move (default: champion)")
        a.add_argument("--reason", default=f"manual {name}", help="recorded in the alias history")

    a = action("history", cmd_history, "every recorded alias move, oldest first")
    a.add_argument("--alias", default=None, help="only this alias's moves")

    a = action("import", cmd_import, "save a version into the BentoML model store (once)")
    a.add_argument("ref", nargs="?", default="champion", help="version number or alias (default: champion)")
