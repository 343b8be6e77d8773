"""``folds``: K-fold training -> out-of-fold ensemble -> tuned post-processing, resumable.

``python -m kit folds --k 5 --preset P`` trains fold 0 .. K-1 in turn (the preset with
``--set folds=K --set fold=k``, the same split_seed, so the K validation sets are disjoint and
cover every labelled image once), predicts each fold's val and test images, fuses the folds into
the run folder RUNS_DIR/NAME (kit.infer.ensemble: the out-of-fold val tables concatenate, the
test tables are fused by WBF) and tunes that ensemble (kit.score.tune) into its postprocess.json.
A rerun finds each fold's run by its config (the newest run folder with exactly that config):
a finished fold (complete train_state.json and both raw tables) is skipped, a fold whose training
stopped is resumed, a trained fold without raw tables is only predicted.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from kit import paths
from kit.config import PRESETS, RunConfig, get_preset
from kit.errors import KitError
from kit.log import say
from kit.runs import TRAIN_STATE, raw_path


def add_folds_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=int, required=True, help="number of folds (2 or more)")
    p.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="configuration of every fold (default: demo on CPU, kaggle on a GPU)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value of every fold (repeatable; folds and fold "
                        "are set by this command)")
    p.add_argument("--data", type=Path, default=None,
                   help="data folder in Kaggle's layout (default: data/rsna, else the embedded "
                        "demo data in data/demo)")
    p.add_argument("--weights", type=Path, default=None, help="initial weights (init=coco)")
    p.add_argument("--runs-dir", type=Path, default=paths.RUNS_DIR,
                   help="folder of the fold runs and the ensemble (default: runs/)")
    p.add_argument("--name", default=None,
                   help="the ensemble's run folder RUNS_DIR/NAME (default: <preset>-folds<K>)")


def find_fold_run(runs_dir: Path, cfg: RunConfig) -> Path | None:
    """The newest run folder under ``runs_dir`` whose config.json is exactly ``cfg``."""
    if not Path(runs_dir).is_dir():
        return None
    for run in sorted(Path(runs_dir).iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            if RunConfig.load(run / "config.json") == cfg:
                return run
        except KitError:
            continue
    return None


def training_complete(run: Path) -> bool:
    """train_state.json says training ran its whole schedule."""
    try:
        return bool(json.loads((Path(run) / TRAIN_STATE).read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def predicted(run: Path) -> bool:
    return raw_path(run, "val").is_file() and raw_path(run, "test").is_file()


def fold_finished(run: Path) -> bool:
    """Complete training and both raw tables: nothing left to do for this fold."""
    return training_complete(run) and predicted(run)


def run_folds(args: argparse.Namespace) -> int:
    from kit.flow.submission import _step, ensure_data
    from kit.infer import predict
    from kit.infer.ensemble import make_ensemble
    from kit.score import tune
    from kit.train.trainer import default_preset, train

    if args.k < 2:
        raise KitError(f"--k {args.k}: folds need 2 or more")
    start = time.time()
    preset = args.preset or default_preset()
    runs_dir = Path(args.runs_dir)
    data_dir = ensure_data(args.data)
    name = args.name or f"{preset}-folds{args.k}"
    members: list[Path] = []
    for k in range(args.k):
        overrides = [*args.set, f"folds={args.k}", f"fold={k}"]
        cfg = dataclasses.replace(get_preset(preset, overrides), data_dir=str(data_dir))
        run = find_fold_run(runs_dir, cfg)
        if run is not None and fold_finished(run):
            say(f"fold {k}/{args.k}: finished in {run}, skipped")
            members.append(run)
            continue
        if run is None:
            say(f"fold {k}/{args.k}: training")
            run = train(preset=preset, data_dir=data_dir, overrides=overrides,
                        weights=args.weights, runs_dir=runs_dir)
        elif not training_complete(run):
            say(f"fold {k}/{args.k}: resuming {run}")
            train(resume=str(run), runs_dir=runs_dir, weights=args.weights)
        say(f"fold {k}/{args.k}: predicting val and test")
        _step(predict, "predict", "--run", run, "--split", "all", "--runs-dir", runs_dir)
        members.append(run)
    ensemble = make_ensemble(members, name, runs_dir=runs_dir, force=True)
    _step(tune, "tune", "--run", ensemble)
    print(f"\nfolds done in {time.time() - start:.0f} s")
    for k, run in enumerate(members):
        print(f"  fold {k}:      {run}")
    print(f"  ensemble:    {ensemble} (out-of-fold raw_val.csv, fused raw_test.csv)\n"
          f"  postprocess: {ensemble / 'postprocess.json'}\n"
          f"  next:        python -m kit submit --run {ensemble}")
    return 0
