"""Command ``demo-data``: write the embedded synthetic data set, easy (kit.data.demo) or as hard as
the real films (``--difficulty rsna``: kit.data.demo_rsna), in Kaggle's layout.

The command lives apart from the two generators so that neither imports the other's command
(demo_rsna builds on demo's pieces; demo never imports demo_rsna).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from kit import paths
from kit.data import demo, demo_rsna


def add_demo_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=paths.DEMO_DIR, help="output folder (default data/demo)")
    parser.add_argument("--difficulty", choices=demo.DIFFICULTIES, default="easy",
                        help="easy (default): clear blobs, labels = truth; rsna: the real label "
                             "statistics, films a reader finds hard, labels drawn by a simulated "
                             "reader (+ hidden demo_true_boxes.csv)")
    parser.add_argument("--n-train", type=int, default=None, help="train images (default 400; rsna 2000)")
    parser.add_argument("--n-test", type=int, default=None, help="test images (default 100; rsna 300)")
    parser.add_argument("--size", type=int, default=None,
                        help="stored image side in px (labels stay in the 1024 frame; default 256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--force", action="store_true", help="replace the data set in a non-empty --out")


def run_demo_data(args: argparse.Namespace) -> int:
    if args.difficulty == "rsna":
        defaults, make = demo_rsna.DEFAULTS, demo_rsna.make_dataset
    else:
        defaults, make = demo.EASY_DEFAULTS, demo.make_dataset
    n_train, n_test, size = (defaults[k] if getattr(args, k) is None else getattr(args, k)
                             for k in ("n_train", "n_test", "size"))
    make(args.out, n_train, n_test, size, args.seed, force=args.force)
    print(f"wrote {n_train} train + {n_test} test images ({size} px, {args.difficulty}) to {args.out}")
    return 0
