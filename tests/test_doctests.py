"""The examples in the library's docstrings run and print what they show."""

import doctest
import importlib
import pkgutil

import pytest

import mindtrace

# The service's modules that a test may import without booting the service.
SERVICE = ["service.errors", "service.guard", "service.logs", "service.openapi"]
MODULES = sorted(m.name for m in pkgutil.walk_packages(mindtrace.__path__, "mindtrace.")) + SERVICE


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_the_examples_are_there():
    examples = sum(
        len(t.examples)
        for name in MODULES
        for t in doctest.DocTestFinder().find(importlib.import_module(name))
    )
    assert examples > 40
