"""Kaggle kernel `full`: train, predict, tune and write /kaggle/working/submission.csv in one session.

Preflight first (the whole flow on 2 images), then the flow under the session's time budget
(KIT_TIME_BUDGET, default 8h15m): training stops early enough for predict/tune/submit to finish.

`python -m kit kernels build full` turns this into one self-contained script (the kit embedded).
Locally, from the repo root: `PYTHONPATH=. python kernels/full/kernel.py --input DIR --dry-run`
(or run the built script anywhere); the flags and KIT_* variables are in kit/flow/kernel.py.
"""
import sys

from kit.flow import kernel as driver


def steps(k: driver.KernelPaths) -> list:
    data = driver.find_competition_data(k.input)
    return [["submission", "--data", str(data), "--preset", k.preset, *k.set_args(),
             "--workdir", str(k.working), "--out", str(k.working / "submission.csv"),
             *k.preflight_args()]]


if __name__ == "__main__":
    code = driver.main(steps)
    if code:             # exit only on failure: a notebook-style runner treats SystemExit(0) as an error
        sys.exit(code)
