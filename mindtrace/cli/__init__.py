"""The ``mindtrace`` command line: ``mindtrace --help`` lists the commands.

Kept light: each command imports torch, Lightning, MLflow or BentoML only when it runs.
"""

from mindtrace.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
