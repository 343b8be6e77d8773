"""Command ``train``: the preflight (when asked), then kit.train.trainer on a preset or a resumed run.

The command lives in flow/ because its ``--preflight`` runs the whole flow on two images first
(kit.flow.preflight), which needs every stage; the training itself is kit.train.trainer.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from kit import paths
from kit.budget import add_budget_arg
from kit.config import PRESETS
from kit.flow.preflight import add_preflight_args
from kit.log import say
from kit.train.trainer import default_preset, train


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="named configuration (default: demo on CPU, kaggle on a GPU)")
    p.add_argument("--data", type=Path, default=None,
                   help="data folder in Kaggle's layout (default: data/rsna, else data/demo)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set image_size=256 (repeatable)")
    p.add_argument("--resume", metavar="RUN", help="continue RUN (a name, a path or 'latest')")
    p.add_argument("--weights", type=Path, default=None,
                   help="initial weights file (e.g. mask_rcnn_coco.h5) for init=coco")
    p.add_argument("--runs-dir", type=Path, default=paths.RUNS_DIR,
                   help="folder of the run folders (default: runs/)")
    p.add_argument("--split", type=Path, default=None, metavar="CSV",
                   help="train/val images from this split CSV (the `split` command's output: "
                        "patientId,split) instead of the seeded n_val split")
    add_budget_arg(p)
    add_preflight_args(p, "--runs-dir")


def run_train(args: argparse.Namespace) -> int:
    from kit.budget import from_arg

    budget = from_arg(args.time_budget)
    if not args.resume:    # the weights first: a missing file fails before the preflight or a run
        from kit.config import get_preset
        from kit.data.weights import init_weights_path

        init_weights_path(get_preset(args.preset or default_preset(), args.set), args.weights)
    if args.preflight and args.resume:
        say("preflight skipped: a resumed run already ran its flow once")
    elif args.preflight:
        from kit.flow.preflight import run_preflight
        from kit.flow.submission import run_argv

        run_preflight(Path(args.data or paths.default_data_dir()), args.preset or default_preset(),
                      args.set, args.weights, args.scratch or args.runs_dir, args.runs_dir,
                      flow=run_argv)
    run = train(preset=args.preset, data_dir=args.data, overrides=args.set, resume=args.resume,
                weights=args.weights, runs_dir=args.runs_dir, budget=budget, split=args.split)
    print(f"run: {run}")
    return 0
