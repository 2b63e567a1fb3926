"""``python -m mindtrace.cli``: the ``mindtrace`` command, run by this very interpreter (a child process)."""

import sys

from mindtrace.cli import main

if __name__ == "__main__":
    sys.exit(main())
