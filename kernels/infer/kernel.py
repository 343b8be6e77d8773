"""Kaggle kernel `infer`: predict (flip TTA), tune and write /kaggle/working/submission.csv from a
run folder attached as input (the `train` kernel's output, or a dataset; KIT_RUN picks one).

`python -m kit kernels build infer` turns this into one self-contained script (the kit embedded).
"""
import sys

from kit.flow import kernel as driver


def steps(k: driver.KernelPaths) -> list:
    data = driver.find_competition_data(k.input)
    run = str(driver.working_copy(driver.find_run(k.input), k, data))
    return [["predict", "--run", run, "--split", "all", "--tta", "flip"],
            ["tune", "--run", run],
            ["submit", "--run", run, "--data", str(data),
             "--out", str(k.working / "submission.csv")]]


if __name__ == "__main__":
    code = driver.main(steps)
    if code:             # exit only on failure: a notebook-style runner treats SystemExit(0) as an error
        sys.exit(code)
