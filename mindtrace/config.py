"""Configuration: shipped defaults, a user file and environment overrides, read through configparser.

Precedence, lowest first: ``defaults.ini`` in the package, the file named by ``MINDTRACE_CONFIG``,
``MINDTRACE_HOME`` (sets ``DIR_PATHS.HOME``), then one variable per key, ``MINDTRACE__<SECTION>__<KEY>``.

>>> cfg = Config(env={"MINDTRACE_HOME": "/srv/mt"})
>>> cfg["DIR_PATHS"]["DATA"]
'/srv/mt/data'
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path

ENV_FILE = "MINDTRACE_CONFIG"
ENV_HOME = "MINDTRACE_HOME"
ENV_PREFIX = "MINDTRACE__"


class Section(Mapping[str, str]):
    """One section of a :class:`Config`: read-only, keys case-insensitive.

    >>> Config(env={})["MLFLOW"]["registered_model"]
    'mnist-mlp'
    """

    def __init__(self, parser: configparser.ConfigParser, name: str):
        self._parser = parser
        self.name = name

    def __getitem__(self, key: str) -> str:
        if not self._parser.has_option(self.name, key):
            raise KeyError(f"no key {key!r} in section [{self.name}]; keys: {', '.join(self)}")
        return self._parser.get(self.name, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._parser.options(self.name))

    def __len__(self) -> int:
        return len(self._parser.options(self.name))

    def getint(self, key: str) -> int:
        return int(self[key])

    def getfloat(self, key: str) -> float:
        return float(self[key])

    def getboolean(self, key: str) -> bool:
        """``true/yes/on/1`` or ``false/no/off/0``, as configparser reads them."""
        return self._parser.getboolean(self.name, key)

    def getlist(self, key: str) -> list[str]:
        """Comma- or newline-separated values, stripped, empty ones dropped."""
        return [v.strip() for v in self[key].replace("\n", ",").split(",") if v.strip()]

    def getpath(self, key: str) -> Path | None:
        """The value as an absolute path with ``~`` expanded, or None when empty."""
        value = self[key].strip()
        return Path(value).expanduser().absolute() if value else None


class Config(Mapping[str, Section]):
    """mindtrace settings: ``Config()["DIR_PATHS"]["DATA"]``.

    Args:
        path: a user INI file; default: the file named by ``MINDTRACE_CONFIG``, if any.
        env: the environment to read overrides from; default ``os.environ``.

    An unknown section or key raises a KeyError that lists what exists.

    >>> Config(env={"MINDTRACE__MNIST__RETRIES": "5"})["MNIST"].getint("RETRIES")
    5
    """

    def __init__(self, path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        self._parser = configparser.ConfigParser(interpolation=configparser.ExtendedInterpolation())
        self._parser.optionxform = str.upper  # keys as written in the docs, looked up case-insensitively
        self._parser.read_string(resources.files("mindtrace").joinpath("defaults.ini").read_text())
        user_file = path if path is not None else env.get(ENV_FILE)
        if user_file:
            user_file = Path(user_file).expanduser()
            if not user_file.is_file():
                raise FileNotFoundError(f"{ENV_FILE} names {user_file}, which is not a file")
            self._parser.read(user_file)
        if env.get(ENV_HOME):
            self._parser.set("DIR_PATHS", "HOME", env[ENV_HOME])
        for name, value in env.items():
            if name.startswith(ENV_PREFIX) and name.count("__") == 2:
                section, key = name[len(ENV_PREFIX) :].split("__")
                if not self._parser.has_section(section.upper()):
                    self._parser.add_section(section.upper())
                self._parser.set(section.upper(), key, value)
        # Expanded once here so that every path derived from HOME is usable as it is.
        home = self._parser.get("DIR_PATHS", "HOME", raw=True)
        self._parser.set("DIR_PATHS", "HOME", str(Path(home).expanduser()))

    def __getitem__(self, section: str) -> Section:
        if not self._parser.has_section(section):
            raise KeyError(f"no section [{section}]; sections: {', '.join(self)}")
        return Section(self._parser, section)

    def __iter__(self) -> Iterator[str]:
        return iter(self._parser.sections())

    def __len__(self) -> int:
        return len(self._parser.sections())

    def home(self) -> Path:
        """The mindtrace home folder (``MINDTRACE_HOME``), as an absolute path."""
        return self["DIR_PATHS"].getpath("HOME")

    def as_dict(self) -> dict[str, dict[str, str]]:
        """Every resolved value, for display: ``{"SECTION": {"KEY": value}}``."""
        return {name: dict(section) for name, section in self.items()}
