"""Kaggle kernel `train`: train a preset on the competition data; the run folder lands in
/kaggle/working/runs (attach this kernel's output to the `infer` kernel).

Pushed with `kernels push train --continue`, the kernel's own previous output is attached: it
copies that run and resumes its last checkpoint, so a schedule longer than one session (9 h)
runs as several sessions. Each session stops within its time budget at a checkpoint.

`python -m kit kernels build train` turns this into one self-contained script (the kit embedded).
"""
import sys

from kit.flow import kernel as driver


def steps(k: driver.KernelPaths) -> list:
    data = driver.find_competition_data(k.input)
    previous = driver.find_previous_run(k.input)
    if previous is not None:        # pushed with --continue: resume our previous version's run
        run = driver.working_copy(previous, k, data)
        return [["train", "--resume", str(run), "--runs-dir", str(k.working / "runs")]]
    return [["train", "--data", str(data), "--preset", k.preset, *k.set_args(),
             "--runs-dir", str(k.working / "runs"), *k.preflight_args()]]


if __name__ == "__main__":
    code = driver.main(steps)
    if code:             # exit only on failure: a notebook-style runner treats SystemExit(0) as an error
        sys.exit(code)
