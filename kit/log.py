"""The kit's own log lines: ``[kit HH:MM:SS] message``, flushed, easy to grep in a kernel log."""
from __future__ import annotations

import atexit
import os
import re
import sys
import threading
import time

PREFIX = "[kit"


def say(message: str) -> None:
    """Print one kit line (stdout, flushed at once so it interleaves rightly with Keras)."""
    print(f"{PREFIX} {time.strftime('%H:%M:%S')}] {message}", flush=True)


def interactive() -> bool:
    """Whether stdout is a terminal (progress bars) rather than a log file (one line per epoch)."""
    return hasattr(sys.stdout, "isatty") and sys.stdout.isatty()


# A native log line (absl/glog format): "W0000 00:00:1796175600.075154   21064 file.cc:699] ..."
NATIVE_LINE = re.compile(rb"^[IWEF]\d{4} \S+ +\d+ [\w.\-]+:\d+\] ")
ABSL_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called"
_installed: list = []


def _dropped(line: bytes) -> bool:
    """INFO/WARNING native lines and absl's preamble (what TF_CPP_MIN_LOG_LEVEL=2 promised)."""
    return line.startswith(ABSL_PREAMBLE) or (NATIVE_LINE.match(line) is not None
                                              and line[:1] in (b"I", b"W"))


def quiet_native_logs() -> bool:
    """Filter TensorFlow's C++ INFO/WARNING lines out of stderr when it is not a terminal.

    TensorFlow 2.20 logs through absl, which no longer honours TF_CPP_MIN_LOG_LEVEL for grappler's
    "Error in PredictCost()" warnings: one multi-KB line per CropAndResize op at every graph
    trace. File descriptor 2 is routed through a pipe and a thread that forwards everything else
    (errors included) unchanged; a partial line is forwarded at once unless it may start a native
    line. Installed once, by ``python -m kit`` and the kernels; on a terminal it does nothing.
    Returns whether the filter is installed."""
    if _installed:
        return True
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") < "2" or os.isatty(2):
        return False
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        pending = b""
        while True:
            chunk = os.read(read_end, 1 << 16)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            out = b"".join(line + b"\n" for line in lines if not _dropped(line))
            if pending and not re.match(rb"^([IWEF]\d{0,4}( |$)|WARNING:)", pending[:6]):
                out, pending = out + pending, b""
            if out:
                os.write(real, out)
        if pending and not _dropped(pending):
            os.write(real, pending)
        os.close(read_end)

    thread = threading.Thread(target=pump, name="kit-stderr-filter", daemon=True)
    thread.start()

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(real, 2)          # closes the pipe's last write end: the pump sees EOF
        thread.join(timeout=5)

    atexit.register(restore)
    _installed.append(restore)
    return True
