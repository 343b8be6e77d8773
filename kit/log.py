"""The kit's own log lines: ``[kit HH:MM:SS] message``, flushed, easy to grep in a kernel log."""
from __future__ import annotations

import sys
import time

PREFIX = "[kit"


def say(message: str) -> None:
    """Print one kit line (stdout, flushed at once so it interleaves rightly with Keras)."""
    print(f"{PREFIX} {time.strftime('%H:%M:%S')}] {message}", flush=True)


def interactive() -> bool:
    """Whether stdout is a terminal (progress bars) rather than a log file (one line per epoch)."""
    return hasattr(sys.stdout, "isatty") and sys.stdout.isatty()
