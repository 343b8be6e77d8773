"""Command line: ``python -m kit <command> ...``; ``main(argv)`` is what tests call in-process.

Each command lives in its own module, imported only when that command runs, so commands that
do not need TensorFlow (score, tune, submit, leaderboard, data checks) never import it. A module
serving command ``foo-bar`` defines ``add_foo_bar_args(parser)`` and ``run_foo_bar(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from kit.errors import KitError

# command: (module, one-line help). Order is the order of the data flow.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("kit.kaggle.download", "download the competition data from Kaggle and unzip it safely"),
    "demo-data": ("kit.data.demo_data", "write the embedded synthetic data set in Kaggle's layout"),
    "weights": ("kit.data.weights", "fetch + check the COCO / ImageNet initial weights into data/weights"),
    "labels": ("kit.data.labels", "validate the label CSVs and print their counts"),
    "split": ("kit.data.split", "patient-level stratified train/val split"),
    "config": ("kit.config", "every key of a preset with its value and meaning (--set applies)"),
    "prepare": ("kit.data.prepare", "decode + resize DICOMs into the prepared-image cache"),
    "train": ("kit.flow.train", "train Mask R-CNN with a preset's schedule"),
    "predict": ("kit.infer.predict", "raw (unthresholded) detections for val or test"),
    "ensemble": ("kit.infer.ensemble", "fuse runs' raw tables (folds or seeds) into a new run folder"),
    "folds": ("kit.flow.folds", "train K folds, predict each, ensemble them and tune the ensemble"),
    "tune": ("kit.score.tune", "sweep post-processing on raw val detections -> postprocess.json"),
    "submit": ("kit.score.submit", "raw test detections + postprocess.json -> submission CSV"),
    "validate": ("kit.score.submission", "check a submission CSV against the sample submission"),
    "score": ("kit.score.score", "competition mAP + P/R/F1 of a submission or raw table"),
    "leaderboard": ("kit.score.leaderboard", "local leaderboard, best first"),
    "report": ("kit.report.report", "pictures and the results table of a run"),
    "view": ("kit.view.view", "live page of a run: films, boxes, post-processing by hand"),
    "submission": ("kit.flow.submission", "the whole flow: data -> train -> predict -> tune -> submit -> score"),
    "kernels": ("kit.kaggle.kernels", "build / push / status / output of the Kaggle kernels"),
    "kaggle-scores": ("kit.kaggle.scores", "public/private scores of our Kaggle submissions"),
}


def _stem(command: str) -> str:
    return command.replace("-", "_")


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items())
    return argparse.ArgumentParser(
        prog="python -m kit",
        description="rsna-kit: RSNA Pneumonia Detection from DICOM to a scored submission.csv.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"commands:\n{lines}\n\n`python -m kit COMMAND --help` explains each one.",
        usage="python -m kit COMMAND [options]",
    )


def build_parser(command: str) -> argparse.ArgumentParser:
    """The parser of one command (imports that command's module only)."""
    module_name, help_ = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"python -m kit {command}", description=help_)
    getattr(module, f"add_{_stem(command)}_args")(parser)
    parser.set_defaults(_run=getattr(module, f"run_{_stem(command)}"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code. A reader that goes away (``... | head``) ends the
    command quietly with 141 (128 + SIGPIPE, what a shell shows for a killed writer)."""
    try:
        code = _main(argv)
        sys.stdout.flush()        # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        _stdout_to_devnull()
        return 141


def exit_process(code: int) -> None:
    """End ``python -m kit`` with ``code``. After a command that imported TensorFlow, the
    interpreter's teardown of its graphs takes seconds (8 s after the demo flow) and does nothing
    a finished command needs: other threads are joined and the atexit handlers run (log
    restore, logging, multiprocessing), the streams flushed, then the process ends at once."""
    if "tensorflow" not in sys.modules:
        sys.exit(code)
    import atexit
    import threading

    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):       # a closed pipe or stream: nothing left to say
            pass
    os._exit(code)


def _stdout_to_devnull() -> None:
    """Point stdout's file descriptor at /dev/null so the exit's flush cannot fail again
    (the recipe of Python's signal module docs, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):     # stdout is not a file (a test's capture): nothing to do
        pass


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        top.print_usage(sys.stderr)
        print(f"error: unknown command {command!r}; choose from: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    parser = build_parser(command)
    try:
        args = parser.parse_args(rest)
    except SystemExit as exc:   # --help (0) or a usage error (2): return, do not exit the caller
        return int(exc.code or 0)
    try:
        return int(args._run(args) or 0)
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept; rerun to resume", file=sys.stderr)
        return 130
