"""What the registry accepts as a model name and as an alias, as regular expressions that both the code and
the HTTP API's OpenAPI document use (JSON Schema ``pattern``), so a name the document admits is one the
registry takes. Light: no MLflow, since BentoML's supervising process reads the document's routes.

>>> check_alias("champion")
'champion'
>>> for bad in ("latest", "v3", "42", "has space", "ok\\n"):
...     try:
...         check_alias(bad)
...     except InvalidQueryError:
...         print("refused", repr(bad))
refused 'latest'
refused 'v3'
refused '42'
refused 'has space'
refused 'ok\\n'
"""

from __future__ import annotations

import re

from mindtrace.registry.errors import InvalidQueryError

# Stricter than MLflow's ``_validate_model_alias_name`` (``[\w\-]*``, at most 255 characters): the first
# character must be a letter or '_', so an alias never reads as a version number (``get_version("3")``);
# not what MLflow reserves ("latest" in any case, v<number>); and no newline, which a trailing ``$`` would
# let through.
ALIAS_PATTERN = r"^(?![\s\S]*\n)(?![Ll][Aa][Tt][Ee][Ss][Tt]$)(?![vV]\d+$)[A-Za-z_][\w\-]{0,254}$"
# MLflow's ``_validate_model_name``: not blank, no '/' or ':', not a path that normalises to another ('.',
# '..' and what starts with it); and no quotes or backslashes, which would break its search filters.
MODEL_NAME_PATTERN = r"^(?!\s*$)(?!\.\.)(?!\.$)[^'\"\\/:]{1,256}$"


def check_alias(alias: str) -> str:
    """``alias`` if MLflow and this registry accept it as an alias name; else :class:`InvalidQueryError`."""
    if not re.search(ALIAS_PATTERN, alias):
        raise InvalidQueryError(
            f"invalid alias {alias!r}: use letters, digits, '_' or '-', starting with a letter or '_'; "
            "not 'latest' or v<number>"
        )
    return alias


def check_model_name(name: str) -> str:
    """``name`` if the registry can query it; else :class:`InvalidQueryError`.

    >>> check_model_name("mnist-mlp")
    'mnist-mlp'
    """
    if not re.search(MODEL_NAME_PATTERN, name):
        raise InvalidQueryError(
            f"invalid model name {name!r}: 1 to 256 characters, not blank, none of ' \" \\ / :, not . or .."
        )
    return name
