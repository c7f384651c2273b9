"""What every console script shares: the exit-code rule and the one-line error report.

The rule (README, "Exit codes"):

* ``0`` (:data:`EXIT_OK`): everything was done;
* ``1`` (:data:`EXIT_SKIPPED`): the run finished but some ids were skipped (they are listed);
* ``2`` (:data:`EXIT_REFUSED`): bad arguments or input, refused before any work (one line on stderr);
* ``130`` (:data:`EXIT_INTERRUPTED`): interrupted (Ctrl-C); re-running resumes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

EXIT_OK = 0
EXIT_SKIPPED = 1
EXIT_REFUSED = 2
EXIT_INTERRUPTED = 130

EXIT_EPILOG = ("exit codes: 0 all done; 1 finished with some ids skipped (listed); "
               "2 bad arguments or input, refused before any work; 130 interrupted.")


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line.

    An exception re-raised from a DataLoader worker carries the worker's traceback in its
    message; only its last line's message is kept. Other messages have their lines joined.
    """
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].startswith("Caught ") and "worker" in lines[0]:
        head, sep, rest = lines[-1].partition(": ")
        return rest if sep and head.endswith(("Error", "Exception")) else lines[-1]
    return " ".join(lines)


def refuse(prog: str, exc: BaseException | str) -> int:
    """Print ``prog: error: message`` (one line) on stderr and return :data:`EXIT_REFUSED`."""
    message = exc if isinstance(exc, str) else one_line(exc)
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_REFUSED


def stage_type(*choices: str) -> Callable[[str], int | str]:
    """An argparse ``type`` for ``--stage``: one of ``choices``, numbers as ``int`` (``"1"`` -> 1)."""

    def parse(value: str) -> int | str:
        if value not in choices:
            raise argparse.ArgumentTypeError(f"invalid choice {value!r} (choose from {', '.join(choices)})")
        return int(value) if value.isdigit() else value

    return parse
