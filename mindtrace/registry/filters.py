"""The filter and ordering language of ``Registry.list_versions`` (and ``mindtrace registry list``).

A filter is ``KEY OP VALUE`` with OP one of ``= == != > >= < <=``; an ordering is ``KEY [asc|desc]``. KEY is
``version``, ``alias``, ``status``, ``run_id``, ``created_at``, ``updated_at``, or ``metrics.X``,
``params.X``, ``tags.X`` (version tags), ``run_tags.X``. Values that read as numbers compare as numbers.
Everything runs on :class:`VersionInfo` objects already fetched, so MLflow's own search syntax never shows.

>>> from mindtrace.registry.schemas import VersionInfo
>>> versions = [
...     VersionInfo.model_construct(version="9", metrics={"test_acc": 0.97}),
...     VersionInfo.model_construct(version="10", metrics={"test_acc": 0.99}),
... ]
>>> good = parse_condition("metrics.test_acc >= 0.98")
>>> [v.version for v in versions if good(v)]
['10']
>>> [v.version for v in order(versions, *parse_order("version asc"))]
['9', '10']
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from mindtrace.registry.errors import InvalidQueryError
from mindtrace.registry.schemas import VersionInfo

FIELDS = ("version", "alias", "status", "run_id", "created_at", "updated_at")
PREFIXES = ("metrics.", "params.", "tags.", "run_tags.")

_CONDITION = re.compile(r"^\s*(?P<key>[A-Za-z_][\w.\-]*)\s*(?P<op>>=|<=|!=|==|=|>|<)\s*(?P<value>.*?)\s*$")
# The same grammar as JSON Schema patterns, for the HTTP API's OpenAPI document: what they match is what
# parse_condition and parse_order accept (tests/test_registry.py holds them to it).
_KEYS = "|".join(FIELDS)
_PREFIXES = "|".join(p.rstrip(".") for p in PREFIXES)
CONDITION_PATTERN = rf"^\s*(?:{_KEYS}|(?:{_PREFIXES})\.[\w.\-]+)\s*(?:>=|<=|!=|==|=|>|<)\s*.*?\s*$"
# An ordering's spaces are ASCII ones, spelt out: JSON Schema's \s (ECMA-262) and Python's differ (Python's
# takes \x1c-\x1f and \x85 for spaces), and schemathesis found a key the document admits and split() cut.
_SPACE = r"[ \t\n\r\x0b\x0c]"
ORDER_PATTERN = (
    rf"^{_SPACE}*(?:(?:{_KEYS}|(?:{_PREFIXES})\.[^ \t\n\r\x0b\x0c]+)"
    rf"(?:{_SPACE}+(?:[Aa][Ss][Cc]|[Dd][Ee][Ss][Cc]))?{_SPACE}*)?$"
)
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}


def check_key(key: str) -> str:
    """``key`` if filters and orderings can use it; else :class:`InvalidQueryError` listing the keys.

    >>> check_key("metrics.test_acc")
    'metrics.test_acc'
    >>> check_key("test_acc")
    Traceback (most recent call last):
    mindtrace.registry.errors.InvalidQueryError: unknown key 'test_acc': use one of version, ...
    """
    if key in FIELDS or (key.startswith(PREFIXES) and key.split(".", 1)[1]):
        return key
    raise InvalidQueryError(
        f"unknown key {key!r}: use one of {', '.join(FIELDS)}, or metrics.NAME, params.NAME, tags.NAME, "
        "run_tags.NAME"
    )


def field_value(info: VersionInfo, key: str) -> Any:
    """The value ``key`` names in ``info``: the alias list for ``alias``, ISO text for times, None if absent.

    >>> info = VersionInfo.model_construct(version="3", aliases=["champion"], params={"train.seed": "3"})
    >>> field_value(info, "params.train.seed"), field_value(info, "alias"), field_value(info, "metrics.x")
    ('3', ['champion'], None)
    """
    if key == "alias":
        return info.aliases
    if key in FIELDS:
        value = getattr(info, key)
        return value.isoformat() if isinstance(value, datetime) else value
    prefix, rest = key.split(".", 1)
    return getattr(info, prefix).get(rest)


def number(value: Any) -> float | None:
    """``value`` as a float, or None when it does not read as a number.

    >>> number("0.98"), number(3), number("champion"), number(None)
    (0.98, 3.0, None, None)
    """
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def sort_key(value: Any) -> tuple[int, Any]:
    """A key that sorts numbers by value (so version 10 follows 9), before any text.

    >>> sorted(["10", "9", "b", "a"], key=sort_key)
    ['9', '10', 'a', 'b']
    """
    as_number = number(value)
    return (0, as_number) if as_number is not None else (1, str(value))


def parse_condition(text: str) -> Callable[[VersionInfo], bool]:
    """A predicate for the filter ``text``; a version without the key never matches.

    ``alias = X`` holds when X is one of the version's aliases, ``alias != X`` when it is not.

    >>> champion = VersionInfo.model_construct(version="3", aliases=["champion"], metrics={"test_acc": 0.99})
    >>> parse_condition("version > 2")(champion), parse_condition("alias != champion")(champion)
    (True, False)
    >>> parse_condition("metrics.test_acc ~ 1")
    Traceback (most recent call last):
    mindtrace.registry.errors.InvalidQueryError: cannot read the filter 'metrics.test_acc ~ 1': ...
    """
    match = _CONDITION.match(text)
    if not match:
        raise InvalidQueryError(
            f"cannot read the filter {text!r}: write KEY OP VALUE, e.g. metrics.test_acc>=0.98"
        )
    key, op, wanted = check_key(match["key"]), _OPS[match["op"]], match["value"].strip("'\"")

    def condition(info: VersionInfo) -> bool:
        value = field_value(info, key)
        if key == "alias":  # a version may carry several aliases
            return op(wanted in value, True) if match["op"] in ("=", "==", "!=") else False
        if value is None:
            return False
        a, b = number(value), number(wanted)
        return op(a, b) if a is not None and b is not None else op(str(value), wanted)

    return condition


def parse_order(text: str | None) -> tuple[str, bool]:
    """The key and whether descending, for the ordering ``text``; newest version first when empty.

    >>> parse_order("metrics.test_acc desc"), parse_order("version"), parse_order(None)
    (('metrics.test_acc', True), ('version', False), ('version', True))
    """
    parts = [part for part in re.split(_SPACE, text or "") if part]
    if not parts:
        return "version", True
    direction = parts[1].lower() if len(parts) == 2 else "asc"
    if len(parts) > 2 or direction not in ("asc", "desc"):
        raise InvalidQueryError(f"cannot read the ordering {text!r}: write KEY [asc|desc]")
    return check_key(parts[0]), direction == "desc"


def order(infos: Sequence[VersionInfo], key: str, descending: bool) -> list[VersionInfo]:
    """``infos`` sorted by ``key``; those without it go last, in either direction.

    >>> infos = [VersionInfo.model_construct(version=v, metrics=m) for v, m in [("1", {}), ("2", {"a": 1.0})]]
    >>> [i.version for i in order(infos, "metrics.a", descending=False)]
    ['2', '1']
    """
    present = [i for i in infos if field_value(i, key) is not None]
    absent = [i for i in infos if field_value(i, key) is None]
    present.sort(key=lambda i: sort_key(field_value(i, key)), reverse=descending)
    return present + absent
