"""``submission``: the whole flow, resumable step by step.

data (real data/rsna, else the embedded demo data) -> train -> predict val/test -> tune ->
submit -> score -> report. Each step's output is its proof of completion: rerunning after a kill
resumes the newest unfinished run of the same configuration and redoes only the missing steps.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from pathlib import Path

from kit import paths
from kit.budget import add_budget_arg
from kit.config import PRESETS, RunConfig, get_preset
from kit.errors import KitError
from kit.io import write_text
from kit.log import say
from kit.flow.preflight import add_preflight_args
from kit.runs import TRAIN_STATE, checkpoint_of, trained_epochs, val_ids


def add_submission_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="configuration (default: demo on CPU, kaggle on a GPU)")
    p.add_argument("--data", type=Path, default=None,
                   help="data folder in Kaggle's layout (default: data/rsna, else the embedded "
                        "demo data in data/demo, generated on first use)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")
    p.add_argument("--weights", type=Path, default=None, help="initial weights (init=coco)")
    p.add_argument("--runs-dir", type=Path, default=paths.RUNS_DIR,
                   help="folder of the run folders (default: runs/)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="put runs/ and submissions/ under this folder (Kaggle: /kaggle/working)")
    p.add_argument("--out", type=Path, default=None,
                   help="also copy the final submission here (e.g. /kaggle/working/submission.csv)")
    p.add_argument("--new", action="store_true",
                   help="start a new run even if an unfinished one with this config exists")
    add_budget_arg(p)
    add_preflight_args(p, "the workdir, else runs/")


def ensure_data(data: Path | None) -> Path:
    """The data folder to use; generates the embedded demo data set when there is no real data."""
    if data is not None:
        if not (Path(data) / paths.TRAIN_LABELS).is_file():
            raise KitError(f"no {paths.TRAIN_LABELS} in {data}: not a data folder in Kaggle's layout")
        return Path(data)
    if (paths.RSNA_DIR / paths.TRAIN_LABELS).is_file():
        print(f"data: the real Kaggle data in {paths.RSNA_DIR}")
        return paths.RSNA_DIR
    print(f"data: no Kaggle data in {paths.RSNA_DIR} (see `make data`); using the EMBEDDED "
          f"SYNTHETIC demo data set in {paths.DEMO_DIR} - its scores are not leaderboard scores")
    if not (paths.DEMO_DIR / paths.TRAIN_LABELS).is_file():
        from kit.data.demo import make_dataset

        make_dataset(paths.DEMO_DIR, **DEMO_DATA)
    return paths.DEMO_DIR


# the embedded demo data set that `make submission` generates when there is no real data
DEMO_DATA = dict(n_train=400, n_test=100, size=256, seed=0)


def find_unfinished(runs_dir: Path, cfg: RunConfig) -> Path | None:
    """Newest run with exactly this config whose pipeline did not finish."""
    if not Path(runs_dir).is_dir():
        return None
    for run in sorted(Path(runs_dir).iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            same = RunConfig.load(run / "config.json") == cfg
        except KitError:
            continue
        if same and not (run / "pipeline.done").is_file():
            return run
    return None


def _newer(path: Path, *than: Path) -> bool:
    return path.is_file() and all(path.stat().st_mtime >= t.stat().st_mtime
                                  for t in than if t.is_file())


def _step(module, command: str, *argv: str | Path) -> None:
    """Run one command's own ``run_<command>`` on ``argv`` parsed by its own parser (the command
    modules, not kit.cli); a non-zero exit fails the flow."""
    stem = command.replace("-", "_")
    parser = argparse.ArgumentParser(prog=f"python -m kit {command}")
    getattr(module, f"add_{stem}_args")(parser)
    start = time.time()
    code = getattr(module, f"run_{stem}")(parser.parse_args([str(a) for a in argv]))
    if code:
        raise KitError(f"step `python -m kit {command} {' '.join(map(str, argv))}` failed "
                       f"(exit {code})")
    say(f"step {command} took {time.time() - start:.0f} s")


def run_argv(argv: list[str]) -> int:
    """``submission`` on a command line's arguments (the preflight's 2-image flow)."""
    parser = argparse.ArgumentParser(prog="python -m kit submission")
    add_submission_args(parser)
    return run_submission(parser.parse_args(argv))


def training_finished(run: Path, cfg: RunConfig) -> bool:
    """All scheduled epochs have checkpoints, or the time budget ended training (train_state)."""
    import json

    state = Path(run) / TRAIN_STATE
    if state.is_file() and json.loads(state.read_text()).get("stopped_by_budget"):
        return True
    return trained_epochs(run) >= cfg.total_epochs


def run_submission(args: argparse.Namespace) -> int:
    from kit.budget import format_duration, from_arg

    start = time.time()
    budget = from_arg(args.time_budget)
    runs_dir, subs_dir = Path(args.runs_dir), paths.SUBMISSIONS_DIR
    if args.workdir:
        runs_dir, subs_dir = Path(args.workdir) / "runs", Path(args.workdir) / "submissions"
    from kit.data.weights import init_weights_path
    from kit.train.trainer import default_preset, train

    preset = args.preset or default_preset()
    init_weights_path(get_preset(preset, args.set), args.weights)   # before data, runs, models
    data_dir = ensure_data(args.data)
    cfg = dataclasses.replace(get_preset(preset, args.set), data_dir=str(data_dir))
    if budget:
        say(f"time budget {format_duration(budget.seconds)} for the whole flow "
            f"({format_duration(budget.left())} left)")
    if args.preflight:
        from kit.flow.preflight import run_preflight

        work = Path(args.workdir) if args.workdir else runs_dir
        run_preflight(data_dir, preset, args.set, args.weights,
                      Path(args.scratch) if args.scratch else work, work, flow=run_argv)
    run = None if args.new else find_unfinished(runs_dir, cfg)
    if run is None:
        run = train(preset=preset, data_dir=data_dir, overrides=args.set, weights=args.weights,
                    runs_dir=runs_dir, budget=budget)
    elif not training_finished(run, cfg):
        say(f"resuming unfinished run {run}")
        train(resume=str(run), runs_dir=runs_dir, budget=budget)
    else:
        say(f"resuming unfinished run {run} (training already finished)")

    from kit.infer import predict
    from kit.report import report
    from kit.score import score, submit, tune

    weights = checkpoint_of(run, "best")     # what predict uses (best.h5, else the newest epoch)
    if not (_newer(run / "raw_val.csv", weights) and _newer(run / "raw_test.csv", weights)):
        _step(predict, "predict", "--run", run, "--split", "all")
    if not _newer(run / "postprocess.json", run / "raw_val.csv"):
        _step(tune, "tune", "--run", run)
    sub = subs_dir / f"{run.name}.csv"
    _step(submit, "submit", "--run", run, "--out", sub, "--force")
    val_sub = write_val_submission(run)
    # a set with no positive image (the preflight's 2-image val) is said and gets no row
    board = ("--leaderboard", subs_dir / "leaderboard.csv", "--no-positive-ok")
    _step(score, "score", "--submission", val_sub, "--labels", data_dir / paths.TRAIN_LABELS,
          *board)
    test_labels = data_dir / paths.DEMO_TEST_LABELS
    if test_labels.is_file():   # the demo's hidden test ground truth: score the real submission
        _step(score, "score", "--submission", sub, "--labels", test_labels, *board)
    _step(report, "report", "--run", run, "--runs-dir", runs_dir)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sub, Path(args.out).with_suffix(".tmp"))
        Path(args.out).with_suffix(".tmp").replace(args.out)
    write_text(run / "pipeline.done", time.strftime("%Y-%m-%d %H:%M:%S\n"))
    if budget:
        say(f"time budget {format_duration(budget.seconds)}: finished with "
            f"{format_duration(budget.left())} to spare")
    print(f"\ndone in {time.time() - start:.0f} s\n  run:        {run}\n  submission: {sub}"
          f"{f' (copied to {args.out})' if args.out else ''}\n  report:     {run / 'report.md'}"
          f"\n  leaderboard: {subs_dir / 'leaderboard.csv'}")
    return 0


def write_val_submission(run: Path) -> Path:
    """The tuned post-processing applied to raw_val.csv, as a submission over the val images."""

    from kit.score.postprocess import PostProcess
    from kit.runs import image_scores_beside, read_raw
    from kit.score.submission import write_submission

    ids = val_ids(run)
    preds = PostProcess.from_json(run / "postprocess.json").apply(
        read_raw(run / "raw_val.csv"), image_scores_beside(run / "raw_val.csv"))
    out = run / "val_submission.csv"
    write_submission(out, preds, ids)
    return out
