"""Run every benchmark in bench/ (or the ones named) and print one JSON object {name: result}.

Usage: python bench/run.py [scorer prepare model train_step ...]
Each bench/<name>.py prints one JSON object on stdout; failures are reported, not hidden.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(names: list[str]) -> int:
    scripts = sorted(p for p in HERE.glob("*.py") if p.name != "run.py")
    if names:
        scripts = [HERE / f"{n}.py" for n in names]
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
