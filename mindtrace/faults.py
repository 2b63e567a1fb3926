"""Failpoints: named places where a test can make this process die, to show that a crash there loses nothing.

Set ``MINDTRACE_FAILPOINT`` to a name and the process kills itself (SIGKILL: no cleanup, no ``finally``)
when it reaches that point, as a power cut or the OOM killer would. Unset, a failpoint costs one dictionary
lookup. The names: ``data``, ``training``, ``registration`` (a version created, not yet judged by the gate),
``alias-move:<alias>`` (the alias moved, its log entry not yet written), ``import`` (a BentoML store entry
half-written).

>>> failpoint("registration")   # nothing happens unless MINDTRACE_FAILPOINT=registration
"""

from __future__ import annotations

import os
import signal

FAILPOINT_ENV = "MINDTRACE_FAILPOINT"


def failpoint(name: str) -> None:
    """Die here, at once, if ``MINDTRACE_FAILPOINT`` names this point."""
    if os.environ.get(FAILPOINT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
