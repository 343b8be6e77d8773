"""Run every benchmark in bench/ (or the ones named) and print one JSON object {name: result}.

Usage: python bench/run.py [scorer prepare model train_step ...]
Each bench/<name>.py prints one JSON object on stdout; failures are reported, not hidden.
With the torchvision peer venv (`make bench-peers`) the default list leaves out model and
train_step: compare.py runs both itself, next to torchvision, and reports them.
image_features.py and levers.py need trained runs (--run, --runs) and are run by hand.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from compare import PEER_PYTHON  # bench/ is this script's folder, first on sys.path

HERE = Path(__file__).resolve().parent
NEEDS_A_RUN = ("image_features", "levers")   # run by hand with trained runs (--run / --runs)


def main(names: list[str]) -> int:
    scripts = sorted(p for p in HERE.glob("*.py")
                     if p.name != "run.py" and p.stem not in NEEDS_A_RUN)
    if names:
        scripts = [HERE / f"{n}.py" for n in names]
    elif PEER_PYTHON.is_file():    # compare runs model.py and train_step.py itself: not twice
        scripts = [p for p in scripts if p.stem not in ("model", "train_step")]
        print("model, train_step: inside compare (torchvision peer venv found)", file=sys.stderr)
    results, failed = {}, False
    for script in scripts:
        start = time.time()
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              cwd=HERE.parent)
        if proc.returncode:
            failed = True
            results[script.stem] = {"error": proc.stderr.strip().splitlines()[-1:]}
        else:
            results[script.stem] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{script.stem}: {time.time() - start:.1f} s", file=sys.stderr)
    print(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
