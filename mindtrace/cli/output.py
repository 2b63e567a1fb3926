"""How the commands print: rich tables for people, JSON for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

# Piped output gets a fixed, wide layout instead of rich's 80 columns, so tables stay readable in logs.
console = Console(width=None if sys.stdout.isatty() else 150)


def print_json(value: BaseModel | Sequence[BaseModel] | dict[str, Any]) -> None:
    """Pydantic results (or lists of them) as JSON: the same documents the HTTP API returns."""
    if isinstance(value, BaseModel):
        data = value.model_dump(mode="json")
    elif isinstance(value, dict):
        data = value
    else:
        data = [v.model_dump(mode="json") for v in value]
    print(json.dumps(data, indent=2))


def cell(value: Any) -> str:
    """A value as a table cell: floats to 4 decimals, whole floats as ints, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.4f}"
    return str(value)


def key_value_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    for key, value in rows.items():
        table.add_row(key, cell(value))
    return table


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    out = Table(title=title, title_justify="left")
    for column in columns:
        out.add_column(column)
    for row in rows:
        out.add_row(*(cell(v) for v in row))
    return out
