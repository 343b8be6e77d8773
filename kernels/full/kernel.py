"""Kaggle kernel `full`: train, predict, tune and write /kaggle/working/submission.csv in one session.

`python -m kit kernels build full` turns this into one self-contained script (the kit embedded).
Locally, from the repo root: `python kernels/full/kernel.py --input DIR --working DIR --dry-run`.
"""
import sys

from kit.kaggle import runtime


def steps(k: runtime.KernelPaths) -> list:
    data = runtime.find_competition_data(k.input)
    return [["submission", "--data", str(data), "--preset", k.preset,
             "--workdir", str(k.working), "--out", str(k.working / "submission.csv")]]


if __name__ == "__main__":
    sys.exit(runtime.main(steps))
