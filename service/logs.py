"""What the service's log lines may carry: one line per event, nothing a client can forge.

- ``SafeLines`` escapes control characters (newlines, NUL, escape sequences) and Unicode's bidirectional
  and line-separator marks in every record, so a request path like ``/x%0A2026-... [INFO] forged`` cannot
  start a line of its own, and ``%E2%80%AE`` cannot reverse what a reader sees. Tracebacks keep their lines.
- ``QuietClientErrors``: BentoML logs every invalid request with a full traceback at ERROR; a client's mistake
  gets one INFO line.

>>> SafeLines.escape("GET /x\\n2026 [INFO] forged\\u202e")
'GET /x\\\\n2026 [INFO] forged\\\\u202e'
"""

from __future__ import annotations

import logging
import re

from pydantic import ValidationError

from service.guard import BodyTooLarge

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


class SafeLines(logging.Filter):
    """Escapes what could forge or disguise a log line, in the message and its arguments."""

    @staticmethod
    def escape(text: str) -> str:
        return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _UNSAFE.search(message):
            record.msg, record.args = self.escape(message), ()
        return True


class QuietClientErrors(logging.Filter):
    """Turns BentoML's traceback for a refused request into one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (ValidationError, BodyTooLarge)):
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = "refused an invalid request: %s [%s]"
        return True


def install() -> None:
    """Put the filters where every record passes: on the handlers that BentoML configured in this worker
    (a filter on a logger would miss records from its children), and on BentoML's request logger."""
    logging.getLogger("bentoml._internal.server.http_app").addFilter(QuietClientErrors())
    # The service's own events (a swap, a rollout's candidate in or out, a wait for a lock) at INFO, like
    # BentoML's: the root logger that carries them lets only warnings through.
    logging.getLogger("mindtrace").setLevel(logging.INFO)
    safe = SafeLines()
    for logger in (logging.getLogger(), logging.getLogger("bentoml")):
        for handler in logger.handlers:
            if not any(isinstance(f, SafeLines) for f in handler.filters):
                handler.addFilter(safe)
