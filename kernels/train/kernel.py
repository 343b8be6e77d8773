"""Kaggle kernel `train`: train a preset on the competition data; the run folder lands in
/kaggle/working (attach this kernel's output to the `infer` kernel).

`python -m kit kernels build train` turns this into one self-contained script (the kit embedded).
"""
import sys

from kit.kaggle import runtime


def steps(k: runtime.KernelPaths) -> list:
    data = runtime.find_competition_data(k.input)
    return [["train", "--data", str(data), "--preset", k.preset, "--runs-dir", str(k.working)]]


if __name__ == "__main__":
    code = runtime.main(steps)
    if code:             # exit only on failure: a notebook-style runner treats SystemExit(0) as an error
        sys.exit(code)
