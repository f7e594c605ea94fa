"""Evaluation figures as PNG files: PR curve, ROC curve, F1 per sIoU threshold, and a qualitative grid (image,
score heat map, ground truth, prediction) for chosen frames. Uses matplotlib's object API (no pyplot): nothing
global changes, no display is needed."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from m2a_training.metrics import LABEL_ANOMALY, LABEL_VOID, ComponentMetrics, PixelMetrics

VOID_GREY = np.array([128, 128, 128], np.uint8)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_pr_curve(pixel: PixelMetrics, path: str | Path, title: str = "") -> Path:
    """Precision over recall, with the AuPRC and the best-F1 point."""
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    ax.plot(pixel.curve_recall, pixel.curve_precision, drawstyle="steps-pre", lw=1.5)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title(f"{title} PR curve ({pixel.mode}): AuPRC {100 * pixel.auprc:.2f}".strip())
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def plot_roc_curve(pixel: PixelMetrics, path: str | Path, title: str = "") -> Path:
    """TPR over FPR, with the FPR95 point marked."""
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    ax.plot(pixel.curve_fpr, pixel.curve_tpr, lw=1.5)
    if math.isfinite(pixel.fpr95):
        ax.plot([pixel.fpr95], [0.95], "o", color="C3", label=f"FPR95 {100 * pixel.fpr95:.2f}")
        ax.legend(loc="lower right")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title(f"{title} ROC ({pixel.mode}): AUROC {100 * pixel.auroc:.2f}".strip())
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def plot_f1_per_tau(components: ComponentMetrics, path: str | Path, title: str = "") -> Path:
    """The component F1 at each sIoU / PPV threshold tau, and their mean (mean F1*)."""
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    taus = np.asarray(components.taus)
    f1 = np.nan_to_num(np.asarray(components.f1_per_tau, float))
    ax.bar(taus, f1, width=0.04)
    if math.isfinite(components.mean_f1):
        ax.axhline(components.mean_f1, color="C3", ls="--", label=f"mean F1* {100 * components.mean_f1:.2f}")
        ax.legend()
    ax.set(xlabel="tau (sIoU / PPV threshold)", ylabel="F1", ylim=(0, 1.02), xticks=taus[::2])
    ax.set_title(f"{title} component F1, threshold {components.threshold:.4g}, {components.track} track".strip())
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, Path(path))


@dataclass(frozen=True)
class GridRow:
    """One frame of the qualitative grid; `image` may be None (a grey panel is drawn)."""

    title: str
    image: np.ndarray | None  # (H, W, 3) uint8 RGB
    score: np.ndarray  # (H, W) float
    label: np.ndarray  # (H, W) uint8 0/1/255


def _heat(score: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Scores as a heat map scaled to the frame's non-void range; void pixels grey."""
    valid = (label != LABEL_VOID) & np.isfinite(score)
    lo, hi = (float(score[valid].min()), float(score[valid].max())) if valid.any() else (0.0, 1.0)
    scaled = np.clip((np.nan_to_num(score) - lo) / max(hi - lo, 1e-12), 0, 1)
    rgb = (matplotlib.colormaps["magma"](scaled)[..., :3] * 255).astype(np.uint8)
    rgb[~valid] = VOID_GREY
    return rgb


def _truth(label: np.ndarray) -> np.ndarray:
    rgb = np.zeros((*label.shape, 3), np.uint8)
    rgb[label == LABEL_ANOMALY] = (255, 140, 0)
    rgb[label == LABEL_VOID] = VOID_GREY
    return rgb


def _prediction(score: np.ndarray, label: np.ndarray, threshold: float) -> np.ndarray:
    """score > threshold against the ground truth: true positives green, false positives red, misses blue."""
    with np.errstate(invalid="ignore"):
        predicted = score > np.float64(threshold)
    gt = label == LABEL_ANOMALY
    rgb = np.zeros((*label.shape, 3), np.uint8)
    rgb[predicted & gt] = (40, 200, 60)
    rgb[predicted & ~gt] = (230, 40, 40)
    rgb[~predicted & gt] = (40, 90, 230)
    rgb[label == LABEL_VOID] = VOID_GREY
    return rgb


def _thin(row: GridRow, max_width: int) -> GridRow:
    """Every k-th pixel of each panel, so a row is at most `max_width` wide (drawing full-size frames is slow)."""
    step = max(1, -(-row.label.shape[1] // max_width))
    if step == 1:
        return row
    image = None if row.image is None else row.image[::step, ::step]
    return GridRow(row.title, image, row.score[::step, ::step], row.label[::step, ::step])


def plot_qualitative(rows: list[GridRow], threshold: float, path: str | Path, max_width: int = 640) -> Path:
    """A grid with one row per frame: image, score heat map, ground truth, prediction at `threshold`; frames are
    thinned to at most `max_width` pixels across."""
    if not rows:
        raise ValueError("plot_qualitative needs at least one frame")
    rows = [_thin(row, max_width) for row in rows]
    h, w = rows[0].label.shape
    width = 12.0
    fig = Figure(figsize=(width, width / 4 * h / w * len(rows) + 0.6 * len(rows)))
    axes = np.atleast_2d(fig.subplots(len(rows), 4))
    heads = (
        "image",
        "score",
        "ground truth (orange: anomaly)",
        f"prediction > {threshold:.4g} (green TP, red FP, blue FN)",
    )
    for r, row in enumerate(rows):
        image = row.image if row.image is not None else np.full((*row.label.shape, 3), 200, np.uint8)
        panels = (image, _heat(row.score, row.label), _truth(row.label), _prediction(row.score, row.label, threshold))
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(heads[c] if c else f"{row.title}", fontsize=7)
    return _save(fig, Path(path))


__all__ = ["GridRow", "plot_f1_per_tau", "plot_pr_curve", "plot_qualitative", "plot_roc_curve"]
