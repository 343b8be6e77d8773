"""The kit's pictures (matplotlib, Agg backend, PNG written atomically through kit.io).

curves.png (training curves + val_map), roc.png (the image classifier), detections.png (ground
truth vs predictions) and results.png (the study's table). Boxes are ``[x, y, w, h]`` (top-left,
pixels of the original 1024-px image) unless said otherwise.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from kit import paths  # noqa: E402
from kit.errors import KitError  # noqa: E402
from kit.io import save_figure  # noqa: E402

IOUS = (0.25, 0.5, 0.75)
GT_COLOR, PRED_COLOR = "lime", "red"


def history_figure(history: pd.DataFrame) -> "plt.Figure":
    """Training curves: a ``val_map`` panel (when the column exists: the competition mAP on
    validation at each epoch end, best epoch marked), then one panel per loss (``loss`` first),
    train vs ``val_`` on a log scale (linear if a value is <= 0). The best epoch is a dotted
    line on every panel.

    ``history`` is kit.mrcnn.training's history.csv: a 1-based ``epoch`` column (the checkpoint
    numbers; rows numbered 1.. when absent) and loss columns with their ``val_`` twins.
    Raises KitError when it holds no epoch or no loss column.
    """
    names = [c for c in history.columns if c != "epoch" and not c.startswith("val_")]
    names = sorted(names, key=lambda c: (c != "loss", c))
    if history.empty or not names:
        raise KitError("training history has no epochs or no loss columns; train the run first")
    epochs = (history["epoch"] if "epoch" in history else pd.Series(range(1, len(history) + 1)))
    epochs = epochs.to_numpy()
    val_map = history["val_map"].to_numpy(np.float64) if "val_map" in history else None
    best = None
    if val_map is not None and np.isfinite(val_map).any():
        best = int(np.nanargmax(val_map))
    panels = (["val_map"] if val_map is not None else []) + names
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, panels):
        if name == "val_map":
            seen = np.isfinite(val_map)
            ax.plot(epochs[seen], val_map[seen], "o-", color="tab:green", label="val mAP")
            if best is not None:
                ax.scatter([epochs[best]], [val_map[best]], marker="*", s=220, color="gold",
                           edgecolor="black", zorder=3,
                           label=f"best: epoch {epochs[best]}, {val_map[best]:.4f}")
            ax.set_title("validation mAP@[0.40:0.75]")
        else:
            curves = [("train", history[name], "o-", "tab:blue")]
            if f"val_{name}" in history:
                curves.append(("val", history[f"val_{name}"], "s--", "tab:orange"))
            for label, values, style, color in curves:
                ax.plot(epochs, values, style, label=label, color=color)
            drawn = np.concatenate([np.asarray(v, np.float64) for _, v, _, _ in curves])
            drawn = drawn[np.isfinite(drawn)]
            if len(drawn) and (drawn > 0).all():
                ax.set_yscale("log")
            ax.set_title("total loss" if name == "loss" else name)
        if best is not None:
            ax.axvline(epochs[best], color="gray", linestyle=":", linewidth=1)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.grid(alpha=0.1, which="minor")
        ax.legend(fontsize=8)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_history(history: pd.DataFrame, out: Path) -> None:
    """curves.png from history.csv (:func:`history_figure`)."""
    save_figure(out, history_figure(history))


def plot_roc(fpr: np.ndarray, tpr: np.ndarray, auc: float, n_pos: int, n_neg: int,
             out: Path) -> None:
    """roc.png: the image classifier's ROC curve (kit.score.metric.roc_curve) with its AUC."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, color="tab:purple", label=f"AUC {auc:.4f}")
    ax.plot([0, 1], [0, 1], ":", color="gray", label="chance")
    ax.set_xlabel(f"false positive rate ({n_neg} images without a box)")
    ax.set_ylabel(f"true positive rate ({n_pos} images with a box)")
    ax.set_title("image classifier on validation: P(Lung Opacity)")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    save_figure(out, fig)


def plot_detections(images: Sequence[np.ndarray], gt: Sequence[np.ndarray],
                    preds: Sequence[tuple[np.ndarray, np.ndarray]], titles: Sequence[str],
                    out: Path, ncols: int = 4) -> None:
    """Grid of images with ground truth (green) and predictions (red, with confidence).

    ``images``: uint8 (S, S) each; ``gt``: (k, 4) and ``preds``: (scores (n,), boxes (n, 4)),
    boxes ``[x, y, w, h]`` in the 1024-px frame, drawn scaled by S / 1024.
    """
    if not (len(images) == len(gt) == len(preds) == len(titles)) or not images:
        raise ValueError("plot_detections needs equally many (>0) images, gt, preds and titles")
    ncols = min(ncols, len(images))
    nrows = -(-len(images) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.8 * nrows), squeeze=False)
    for ax, image, boxes, (scores, pboxes), title in zip(axes.flat, images, gt, preds, titles):
        side = image.shape[0]
        scale = side / paths.IMAGE_SIZE
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        for x, y, w, h in np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale:
            ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor=GT_COLOR, linewidth=2))
        for s, (x, y, w, h) in zip(np.asarray(scores).reshape(-1),
                                   np.asarray(pboxes, dtype=np.float64).reshape(-1, 4) * scale):
            ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor=PRED_COLOR, linewidth=1.5))
            ax.text(x, y, f"{s:.2f}", color="white", fontsize=8, va="bottom",
                    bbox=dict(facecolor=PRED_COLOR, edgecolor="none", pad=1, alpha=0.8))
        ax.set_title(title, fontsize=9)
        ax.set_xlim(0, side)
        ax.set_ylim(side, 0)
        ax.axis("off")
    for ax in axes.flat[len(images):]:
        ax.axis("off")
    fig.suptitle("ground truth: green; prediction: red (confidence)", fontsize=11)
    fig.tight_layout()
    save_figure(out, fig)


def plot_results(table: pd.DataFrame, out: Path) -> None:
    """results.png: grouped bars (one bar per run for each metric) above the table itself."""
    if table.empty:
        raise ValueError("no runs to draw")
    metrics = [c for c in table.columns if "@" in c] + ["mAP"]
    fig, (bars, tab) = plt.subplots(2, 1, figsize=(max(9, 0.9 * len(metrics) + 2),
                                                    4 + 0.35 * len(table)),
                                    gridspec_kw={"height_ratios": [3, 0.6 + 0.3 * len(table)]})
    width = 0.8 / len(table)
    xs = np.arange(len(metrics))
    for i, (_, row) in enumerate(table.iterrows()):
        bars.bar(xs + (i - (len(table) - 1) / 2) * width, row[metrics].astype(float), width,
                 label=row["run"])
    bars.set_xticks(xs, metrics)
    bars.set_ylim(0, 1.05)
    bars.set_ylabel("validation")
    bars.grid(axis="y", alpha=0.3)
    bars.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    bars.set_title("P = the study's mAP, R = its mAR; mAP = competition mAP@[0.40:0.75]")
    tab.axis("off")
    shown = table[["run", "backbone", "layers", "augmentation"] + metrics]
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
             for row in shown.itertuples(index=False)]
    chars = [max(len(str(c)), *(len(r[i]) for r in cells)) for i, c in enumerate(shown.columns)]
    drawn = tab.table(cellText=cells, colLabels=list(shown.columns), loc="center",
                      cellLoc="center", colWidths=[n / sum(chars) for n in chars])
    drawn.auto_set_font_size(False)
    drawn.set_fontsize(7)
    fig.tight_layout()
    save_figure(out, fig)
