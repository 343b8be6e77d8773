"""kit.log: kit lines, and TensorFlow's native INFO/WARNING lines filtered out of a log file."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kit.log import _dropped, say

REPO = Path(__file__).resolve().parent.parent
PROBE = r'''
import os, sys
from kit.log import quiet_native_logs
print("installed", quiet_native_logs(), quiet_native_logs(), flush=True)
os.write(2, b"W0000 00:00:1796175600.075154   21064 op_level_cost_estimator.cc:699] Error in "
            b"PredictCost() for the op: CropAndResize" + b"x" * 5000 + b"\n")
os.write(2, b"I0000 00:00:1796174703.486252   18113 port.cc:153] oneDNN custom operations are on\n")
os.write(2, b"E0000 00:00:1796175600.075154   21064 util.cc:131] a real error\n")
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
sys.stderr.write("a python warning\n"); sys.stderr.flush()
os.write(2, b"W0000 00:00:1.5   21064 a.cc:1] split ")
os.write(2, b"across writes\nprogress 50%\r")
os.write(2, b"progress 100%")
'''


def test_native_warnings_are_filtered_from_a_log_file(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    with open(tmp_path / "err.log", "wb") as err:
        proc = subprocess.run([sys.executable, "-c", PROBE], stdout=subprocess.PIPE, stderr=err,
                              env=env, timeout=60)
    assert proc.returncode == 0 and proc.stdout.decode().strip() == "installed True True"
    text = (tmp_path / "err.log").read_bytes().decode()
    assert "PredictCost" not in text and "oneDNN" not in text and "absl::Initialize" not in text
    assert "split" not in text                             # a native line across two writes
    assert "E0000 00:00:1796175600.075154   21064 util.cc:131] a real error\n" in text
    assert "a python warning\n" in text
    assert text.endswith("progress 50%\rprogress 100%")    # partial lines are not held back


def test_verbose_native_logs_are_kept_when_asked(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "0"}
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, env=env, timeout=60)
    assert proc.stdout.decode().strip() == "installed False False"
    assert b"PredictCost" in proc.stderr


def test_dropped_lines():
    assert _dropped(b"W1202 01:02:03.000004  7 grappler.cc:12] x")
    assert not _dropped(b"E1202 01:02:03.000004  7 grappler.cc:12] x")
    assert not _dropped(b"Warning: something of ours")


def test_say_prefix(capsys):
    say("stage: heads")
    line = capsys.readouterr().out
    assert line.startswith("[kit ") and line.endswith("] stage: heads\n") and len(line) == 28
