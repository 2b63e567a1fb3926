"""``mindtrace rollout ...``: start, follow and stop a staged rollout of a candidate version.

The commands change the same registry state the HTTP routes do (``mindtrace.rollout``: the model's
``mindtrace.rollout`` tag and the ``challenger`` alias), so they work with or without a running service; a
service follows within its swap interval. The evidence comes from the shared prediction log, the same
computation the service's decision loop runs.

>>> main(["rollout", "start", "2", "--percent", "5"])      # doctest: +SKIP
>>> main(["rollout", "status", "--json"])                  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, get_args

from mindtrace.cli.output import cell, console, key_value_table, print_json, table
from mindtrace.cli.registry import add_action
from mindtrace.config import Config

if TYPE_CHECKING:
    from mindtrace.registry.query import Registry
    from mindtrace.rollout import Rollout, RolloutRequest


def _registry(args: argparse.Namespace, config: Config | None = None) -> Registry:
    from mindtrace.registry import Registry  # MLflow: seconds to import, so not for `mindtrace --help`

    return Registry(tracking_uri=args.tracking_uri, config=config)


def rollout_request(args: argparse.Namespace, config: Config) -> RolloutRequest:
    """The request the options describe: the criteria not given take the ``[ROLLOUT]`` defaults, merged
    exactly as ``POST .../rollout`` merges a body with them.

    >>> parser = argparse.ArgumentParser()
    >>> add_commands(parser.add_subparsers())
    >>> args = parser.parse_args(["rollout", "start", "2", "--min-requests", "50"])
    >>> request = rollout_request(args, Config(env={}))
    >>> request.version, request.mode, request.percent, request.min_requests, request.min_labels
    ('2', 'canary', 10.0, 50, 200)
    """
    from mindtrace.cli.main import _given  # main imports this module: a top-level import would be circular
    from mindtrace.rollout import Criteria, RolloutRequest

    # Every option's dest is its field's name (VERSION, --mode, ... and the generated criteria options).
    defaults = Criteria.from_config(config).model_dump()
    return RolloutRequest.model_validate({**defaults, **_given(args, RolloutRequest)})


def _swap_note(config: Config) -> str:
    seconds = config["SERVICE"]["SWAP_POLL_SECONDS"]
    return f"a running service follows within its swap interval ([SERVICE] SWAP_POLL_SECONDS = {seconds} s)"


def cmd_start(args: argparse.Namespace) -> int:
    """``mindtrace rollout start [VERSION]``: the candidate imported into BentoML, then the rollout recorded.

    >>> main(["rollout", "start", "challenger", "--mode", "shadow"])   # doctest: +SKIP
    0
    """
    from mindtrace.registry import import_version
    from mindtrace.rollout import current, start
    from mindtrace.rollout.state import CHAMPION

    config = Config()
    request = rollout_request(args, config)  # bad options fail here, before any registry call
    registry = _registry(args, config)
    name = registry.model_name(args.model)
    # One version number from here on: an alias that moves meanwhile must not make us import one version
    # and roll out another.
    version = registry.get_version(name, request.version).version
    request = request.model_copy(update={"version": version})
    running = current(registry, name)
    champion = registry.alias_target(name, CHAMPION)
    if not (running is not None and running.running) and champion not in (None, version):
        # A service's workers have no torch: a candidate missing from the store would cost each of them an
        # import in a child process before it could serve. Skipped when start() is bound to refuse, so that
        # a refusal takes a registry call, not an import.
        imported = import_version(version, name, registry)
        if imported.created and not args.json:
            console.print(
                f"version {version} imported into the BentoML store as {imported.tag}", highlight=False
            )
    rollout = start(registry, name, request)  # started by the login name
    if args.json:
        print_json(rollout)
        return 0
    console.print(key_value_table(f"rollout {rollout.id} of {rollout.model} started", _summary(rollout)))
    console.print(_swap_note(config), highlight=False)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """``mindtrace rollout status``: the current or last rollout, with its evidence so far while it runs.

    >>> main(["rollout", "status"])   # doctest: +SKIP
    0
    """
    from mindtrace.monitoring.store import existing_log
    from mindtrace.rollout import status

    config = Config()
    rollout = status(_registry(args, config), args.model, existing_log(config))
    if args.json:
        print_json(rollout)
        return 0
    _print_rollout(rollout, config)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """``mindtrace rollout stop``: end the running rollout as aborted; the champion alone serves.

    With none running it shows the last one and succeeds: stopping what has ended changes nothing.

    >>> main(["rollout", "stop"])   # doctest: +SKIP
    0
    """
    from mindtrace.monitoring.store import existing_log
    from mindtrace.rollout import stop

    config = Config()
    registry = _registry(args, config)
    rollout, changed = stop(registry, args.model, existing_log(config))
    if args.json:
        print_json(rollout)
        return 0
    if changed:
        console.print(
            f"rollout {rollout.id} aborted: version {rollout.candidate} leaves traffic, the champion "
            f"(version {registry.alias_target(rollout.model)}) alone serves; {_swap_note(config)}",
            highlight=False,
        )
    else:  # none was running, or it ended (a decision, another person) between our look and our stop
        console.print(f"no rollout of {rollout.model} is running; the last one:", highlight=False)
    _print_rollout(rollout, config)
    return 0


def _summary(rollout: Rollout) -> dict[str, object]:
    return {
        "id": rollout.id,
        "mode": rollout.mode,
        "percent": f"{rollout.percent:g} %",
        "sticky header": rollout.sticky_header or "- (each request at random)",
        "champion": rollout.champion,
        "candidate": rollout.candidate,
        "status": rollout.status,
        "started": f"{rollout.started_at.isoformat(timespec='seconds')} by {rollout.started_by}",
    }


def _print_rollout(rollout: Rollout, config: Config) -> None:
    summary = _summary(rollout)
    if not rollout.running:
        ended = rollout.ended_at.isoformat(timespec="seconds") if rollout.ended_at else "-"
        summary.update(ended=f"{ended} by {rollout.ended_by or '-'}", reason=rollout.reason)
    console.print(key_value_table(f"rollout of {rollout.model}", summary))
    evidence = rollout.evidence
    if evidence is None:
        if rollout.running:
            from mindtrace.monitoring.store import log_path

            console.print(f"no evidence yet: no prediction log at {log_path(config)}", highlight=False)
        return
    rows = [
        (role, v.version, v.requests, v.errors, v.p99_ms, v.labelled, v.accuracy)
        for role, v in (("champion", evidence.champion), ("candidate", evidence.candidate))
    ]
    when = "so far" if rollout.running else "at its end"
    title = f"evidence {when} ({evidence.seconds:g} s)"
    columns = ("", "version", "requests", "errors", "p99 ms", "labels", "accuracy")
    console.print(table(title, columns, rows))
    share = "-" if evidence.share is None else f"{evidence.share:.2%}"
    line = f"share to the candidate: {share} (target {rollout.percent:g} %)"
    if rollout.mode == "shadow":
        line += f"; agreement: {cell(evidence.agreement)} on {evidence.compared} requests"
    console.print(line, highlight=False)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``rollout`` and its actions to the top-level parser.

    >>> parser = argparse.ArgumentParser()
    >>> add_commands(parser.add_subparsers())
    >>> parser.parse_args(["rollout", "start", "--mode", "shadow", "--max-minutes", "30"]).max_minutes
    30.0
    """
    from mindtrace.cli.main import _add_options  # main imports this module: a top-level import is circular
    from mindtrace.rollout.state import Criteria, Mode, RolloutRequest

    p = commands.add_parser("rollout", help="staged rollout of a candidate beside the champion: start, stop")
    actions = p.add_subparsers(dest="rollout_command", required=True, metavar="ACTION")

    def action(name: str, func, help: str) -> argparse.ArgumentParser:
        return add_action(actions, name, func, help)

    fields = RolloutRequest.model_fields
    a = action("start", cmd_start, "roll a version out beside the champion, as a canary or in shadow")
    a.add_argument(
        "version", nargs="?", default="challenger", help="version number or alias (default: challenger)"
    )
    mode_help = f"{fields['mode'].description} (default: canary)"
    a.add_argument("--mode", default=None, choices=get_args(Mode), help=mode_help)
    a.add_argument("--percent", type=float, default=None, help=fields["percent"].description)
    a.add_argument("--sticky-header", default=None, metavar="NAME", help=fields["sticky_header"].description)
    _add_options(a.add_argument_group("decision criteria (default: [ROLLOUT] settings)"), Criteria)

    action("status", cmd_status, "the current or last rollout, with the evidence so far while it runs")
    action("stop", cmd_stop, "end the running rollout as aborted: the champion alone serves")
