"""`m2a-eval`: anomaly-segmentation evaluation (shared/design/METRICS.md), two ways in.

    m2a-eval model --checkpoint FILE --dataset NAME [--root DIR] [scoring options] [common options]
        runs the model through the node's scoring code (`anomaly_segmentation`) on a data set of
        `m2a_training.data.benchmarks` (ra21, ro21, fs_laf, fs_static, road_anomaly, packaged, cityscapes,
        synthroad), with any Table-3 variant or per-pixel baseline and optional flip TTA;
    m2a-eval scores --scores DIR --labels DIR [--images DIR] [common options]
        evaluates any method's precomputed score maps (NAME.npy float (H, W), or 16-bit PNG / TIFF) against label
        PNGs (NAME.png, 0 / 1 / 255) matched by file stem, as the benchmarks do.

Common options: --mode exact|smiyc, --track anomaly|obstacle|none, --threshold T (component threshold; default:
the best-F1 pixel threshold, which takes a second pass over the scores), --skip-no-anomaly (the authors'
protocol), --json FILE. Output: a markdown table on stdout, a JSON file with every figure (fractions in 0..1;
NaN written as null), and PNG figures next to the JSON file (PR and ROC curves, F1 per tau, a qualitative grid
of the worst and best frames).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from m2a_perception.classes import CITYSCAPES_CLASSES
from m2a_training.data.benchmarks import (
    DATASETS,
    Benchmark,
    SynthRoadBenchmark,
    open_benchmark,
    read_label_png,
    read_rgb,
    read_score_map,
)
from m2a_training.metrics import (
    MODES,
    TRACKS,
    ComponentAccumulator,
    ComponentMetrics,
    ConfusionAccumulator,
    FrameComponents,
    PixelAccumulator,
    PixelMetrics,
    SemanticMetrics,
)

SCORE_EXTENSIONS = (".npy", ".png", ".tif", ".tiff")
FALLBACK_THRESHOLD = 0.5  # component threshold when there is no best-F1 threshold (no anomaly pixel at all)


# ----------------------------------------------------------------------------------------------------------
# Frame sources


@dataclass(frozen=True)
class EvalFrame:
    """What the evaluation reads of one frame; None where a source has no such data."""

    name: str
    score: np.ndarray | None = None  # (H, W) float, higher = more anomalous
    anomaly: np.ndarray | None = None  # (H, W) uint8 0 / 1 / 255
    semantic: np.ndarray | None = None  # (H, W) predicted trainIds
    semantic_gt: np.ndarray | None = None  # (H, W) trainIds, 255 ignored
    image: np.ndarray | None = None  # (H, W, 3) uint8 RGB
    where: str = ""  # how error messages name the frame (its label file, say); default: its name

    @property
    def label(self) -> str:
        return self.where or self.name


class FrameSource(Protocol):
    """Random access to a data set's frames, so a second pass (components, figures) can read them again."""

    names: list[str]

    def __len__(self) -> int: ...

    def frame(self, index: int, *, image: bool = False, again: bool = False) -> EvalFrame: ...


class ScoreFolder:
    """Score maps ``NAME.{npy,png,tif,tiff}`` paired by file stem with label maps ``NAME.png`` (and, for the
    figures only, images ``NAME.{png,jpg,jpeg,webp}``); a missing partner is an error naming it."""

    def __init__(self, scores: str | Path, labels: str | Path, images: str | Path | None = None) -> None:
        scores, labels = Path(scores), Path(labels)
        for what, folder in (("--scores", scores), ("--labels", labels)):
            if not folder.is_dir():
                raise FileNotFoundError(f"{what} folder {folder} does not exist")
        self.scores = _by_stem(scores, SCORE_EXTENSIONS, "score map")
        self.labels = _by_stem(labels, (".png",), "label map")
        for name, path in self.scores.items():
            if name not in self.labels:
                raise FileNotFoundError(f"score map {path} has no label map {labels / (name + '.png')}")
        for name, path in self.labels.items():
            if name not in self.scores:
                raise FileNotFoundError(f"label map {path} has no score map {scores / name}.<npy|png|tif|tiff>")
        if not self.scores:
            raise FileNotFoundError(f"no score maps (*.npy, *.png, *.tif) in {scores}")
        self.images = _by_stem(Path(images), (".png", ".jpg", ".jpeg", ".webp"), "image") if images else {}
        self.names = sorted(self.scores)

    def __len__(self) -> int:
        return len(self.names)

    def frame(self, index: int, *, image: bool = False, again: bool = False) -> EvalFrame:
        name = self.names[index]
        picture = read_rgb(self.images[name]) if image and name in self.images else None
        where = f"{self.scores[name]} / {self.labels[name]}"
        return EvalFrame(
            name, read_score_map(self.scores[name]), read_label_png(self.labels[name]), image=picture, where=where
        )


def _by_stem(folder: Path, extensions: tuple[str, ...], what: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in extensions and path.is_file():
            if path.stem in found:
                raise ValueError(f"two {what}s share the stem {path.stem!r}: {found[path.stem]} and {path}")
            found[path.stem] = path
    return found


class ModelSource:
    """Runs a model on a data set through `anomaly_segmentation` (the node's scoring code).

    Scores are written to `cache_dir` as ``scores/NAME.npy`` (float32) with ``labels/NAME.png`` beside them, so a
    second pass reads them instead of running the model again, and the folder can be fed to ``m2a-eval scores``.
    """

    def __init__(
        self,
        model: Any,
        dataset: Benchmark | SynthRoadBenchmark,
        cfg: Any,
        *,
        cache_dir: Path | None = None,
        short_edge: int | None = None,
        max_long: int | None = None,
    ) -> None:
        self.model = model
        self.dataset = dataset
        self.cfg = cfg
        self.cache_dir = cache_dir
        self.short_edge = short_edge
        self.max_long = max_long
        self.names = list(dataset.names)
        self.seconds = 0.0  # time spent in the model and scoring

    def __len__(self) -> int:
        return len(self.names)

    def frame(self, index: int, *, image: bool = False, again: bool = False) -> EvalFrame:
        from m2a_perception.model.scoring import anomaly_segmentation, resize_shortest_edge

        data = self.dataset[index]
        # only frames with anomaly labels are read again (component pass, figures): only they are kept
        cached = self.cache_dir / "scores" / f"{data.name}.npy" if self.cache_dir and data.anomaly is not None else None
        semantic = None
        if again and cached is not None and cached.is_file():
            score = np.load(cached, allow_pickle=False)
        else:
            h, w = data.image.shape[:2]
            size = None
            if self.short_edge:
                size = resize_shortest_edge(h, w, self.short_edge, self.max_long or 2 * self.short_edge)
            start = time.perf_counter()
            score, semantic = anomaly_segmentation(self.model, data.image, self.cfg, size)
            self.seconds += time.perf_counter() - start
            if cached is not None:
                np.save(cached, score)
                Image.fromarray(data.anomaly).save(self.cache_dir / "labels" / f"{data.name}.png")
        return EvalFrame(data.name, score, data.anomaly, semantic, data.semantic, data.image if image else None)


# ----------------------------------------------------------------------------------------------------------
# The evaluation


@dataclass(frozen=True)
class EvalOptions:
    """How to evaluate (see the module docstring for the meaning of each)."""

    mode: str = "exact"
    track: str = "anomaly"
    threshold: float | None = None
    skip_no_anomaly: bool = False
    grid_frames: int = 2
    progress: bool = True


@dataclass(frozen=True)
class FrameStat:
    """One frame's figures at the component threshold, for picking the worst and best frames."""

    index: int
    name: str
    pixel_f1: float
    gt_components: int
    pred_components: int
    mean_siou: float

    @staticmethod
    def of(index: int, name: str, frame: FrameComponents) -> FrameStat:
        siou = float(frame.siou.mean()) if frame.siou.size else math.nan
        return FrameStat(index, name, frame.pixel_f1, int(frame.siou.size), int(frame.ppv.size), siou)


@dataclass
class EvalResult:
    """Everything an evaluation found; `to_json` flattens it."""

    options: EvalOptions
    frames: int
    pixel: PixelMetrics | None = None
    components: ComponentMetrics | None = None
    semantic: SemanticMetrics | None = None
    threshold: float | None = None
    threshold_source: str | None = None
    frame_stats: list[FrameStat] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _progress(items: Sequence[int], desc: str, enabled: bool) -> Iterable[int]:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="frame", disable=None, file=sys.stderr)


def evaluate(source: FrameSource, options: EvalOptions) -> EvalResult:
    """Pixel metrics (and mIoU) in one pass; component metrics in the same pass when a threshold is given, else
    in a second pass at the best-F1 pixel threshold."""
    start = time.perf_counter()
    if options.mode not in MODES:
        raise ValueError(f"--mode must be one of {MODES}, got {options.mode!r}")
    if options.track not in TRACKS:
        raise ValueError(f"--track must be one of {tuple(TRACKS)}, got {options.track!r}")
    result = EvalResult(options, len(source))
    pixel = PixelAccumulator(options.mode, skip_images_without_anomaly=options.skip_no_anomaly)
    confusion = ConfusionAccumulator()
    components = ComponentAccumulator(options.threshold, options.track) if options.threshold is not None else None
    used: list[int] = []
    has_anomaly = has_semantic = False
    for i in _progress(range(len(source)), "evaluating", options.progress):
        frame = source.frame(i)
        if frame.semantic is not None and frame.semantic_gt is not None:
            confusion.update(frame.semantic, frame.semantic_gt, frame.label)
            has_semantic = True
        if frame.anomaly is None:
            continue
        has_anomaly = True
        if not pixel.update(frame.score, frame.anomaly, frame.label):
            continue
        used.append(i)
        if components is not None:
            result.frame_stats.append(
                FrameStat.of(i, frame.name, components.update(frame.score, frame.anomaly, frame.label))
            )
    if has_semantic:
        result.semantic = confusion.compute()
    if has_anomaly:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result.pixel = pixel.compute()
        result.warnings.extend(str(w.message) for w in caught)
        if options.threshold is not None:
            result.threshold, result.threshold_source = options.threshold, "given (--threshold)"
        elif math.isfinite(result.pixel.best_f1_threshold):
            result.threshold, result.threshold_source = result.pixel.best_f1_threshold, "best pixel F1"
        else:
            result.threshold, result.threshold_source = FALLBACK_THRESHOLD, "fallback (no best-F1 threshold)"
            result.warnings.append(f"no best-F1 pixel threshold: components evaluated at {FALLBACK_THRESHOLD}")
        if components is None:
            components = ComponentAccumulator(result.threshold, options.track)
            for i in _progress(used, "components", options.progress):
                frame = source.frame(i, again=True)
                stat = FrameStat.of(i, frame.name, components.update(frame.score, frame.anomaly, frame.label))
                result.frame_stats.append(stat)
        result.components = components.compute()
    result.seconds = time.perf_counter() - start
    return result


def pick_frames(stats: list[FrameStat], count: int) -> tuple[list[FrameStat], list[FrameStat]]:
    """The `count` worst frames (lowest pixel F1 at the threshold) and the `count` best among those with an
    anomaly (a frame with neither anomaly nor prediction is trivially perfect)."""
    if count <= 0 or not stats:
        return [], []
    ordered = sorted(stats, key=lambda s: (s.pixel_f1, s.name))
    worst = ordered[:count]
    with_gt = [s for s in ordered if s.gt_components > 0 and s not in worst]
    return worst, with_gt[::-1][:count]


# ----------------------------------------------------------------------------------------------------------
# Reports


def _num(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def to_json(result: EvalResult, meta: dict[str, Any]) -> dict[str, Any]:
    """Every figure, as plain JSON: fractions in 0..1, NaN as null."""
    p, c, s = result.pixel, result.components, result.semantic
    out: dict[str, Any] = {
        "AuPRC": _num(p.auprc) if p else None,
        "FPR95": _num(p.fpr95) if p else None,
        "FPR95_interpolated": _num(p.fpr95_interpolated) if p else None,
        "AUROC": _num(p.auroc) if p else None,
        "best_F1": _num(p.best_f1) if p else None,
        "best_F1_threshold": _num(p.best_f1_threshold) if p else None,
        "sIoU": _num(c.siou) if c else None,
        "PPV": _num(c.ppv) if c else None,
        "mean_F1": _num(c.mean_f1) if c else None,
        "mIoU": _num(s.miou) if s else None,
        "mode": result.options.mode,
        "track": result.options.track,
        "threshold": _num(result.threshold),
        "threshold_source": result.threshold_source,
        "definitions": {
            "FPR95": "FPR at the first curve point with TPR >= 0.95 (no interpolation)",
            "FPR95_interpolated": "the authors' variant: linear interpolation of the ROC curve at TPR 0.95",
            "components": "prediction = score > threshold (strict), 8-connectivity, SMIYC size filters of the track",
            "units": "fractions in 0..1",
        },
    }
    track = TRACKS[result.options.track]
    out["track_filters"] = {"min_pred_size": track.min_pred_size, "min_gt_size": track.min_gt_size}
    out["data"] = {
        "frames": result.frames,
        "evaluated_frames": p.images if p else result.frames,
        "skipped_frames": p.skipped_images if p else 0,
        "skip_frames_without_anomaly": result.options.skip_no_anomaly,
        "anomaly_pixels": p.positives if p else None,
        "normal_pixels": p.negatives if p else None,
    }
    if p:
        out["pixel"] = {"fpr95_threshold": _num(p.fpr95_threshold)}
    if c:
        out["components"] = {
            "taus": list(c.taus),
            "F1_per_tau": [_num(v) for v in c.f1_per_tau],
            "TP": list(c.tp),
            "FN": list(c.fn),
            "FP": list(c.fp),
            "gt_components": c.gt_components,
            "pred_components": c.pred_components,
        }
    if s:
        out["IoU_per_class"] = {name: _num(v) for name, v in zip(CITYSCAPES_CLASSES, s.iou)}
        out["pixel_accuracy"] = _num(s.pixel_accuracy)
    worst, best = pick_frames(result.frame_stats, result.options.grid_frames)
    out["frames"] = {
        "worst": [_frame_json(f) for f in worst],
        "best": [_frame_json(f) for f in best],
    }
    out["warnings"] = list(result.warnings)
    out["seconds"] = round(result.seconds, 3)
    out.update(meta)
    return out


def _frame_json(stat: FrameStat) -> dict[str, Any]:
    return {
        "name": stat.name,
        "pixel_F1": _num(stat.pixel_f1),
        "gt_components": stat.gt_components,
        "pred_components": stat.pred_components,
        "mean_sIoU": _num(stat.mean_siou),
    }


def _pct(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.2f}"


def markdown(result: EvalResult, dataset: str) -> str:
    """The headline figures as a markdown table (percent), plus a per-class IoU table when there is one."""
    p, c, s = result.pixel, result.components, result.semantic
    lines = [
        "| data set | mode | frames | AuPRC | FPR95 | FPR95 (interp.) | AUROC | sIoU | PPV | mean F1 | mIoU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {dataset} | {result.options.mode} | {p.images if p else result.frames} | {_pct(p.auprc if p else None)} "
        f"| {_pct(p.fpr95 if p else None)} | {_pct(p.fpr95_interpolated if p else None)} "
        f"| {_pct(p.auroc if p else None)} | {_pct(c.siou if c else None)} | {_pct(c.ppv if c else None)} "
        f"| {_pct(c.mean_f1 if c else None)} | {_pct(s.miou if s else None)} |",
    ]
    if c is not None:
        track = TRACKS[result.options.track]
        lines.append("")
        lines.append(
            f"Components at threshold {result.threshold:.6g} ({result.threshold_source}), {track.name} track "
            f"(predictions < {track.min_pred_size} px deleted, ground truth < {track.min_gt_size} px void): "
            f"{c.gt_components} ground-truth and {c.pred_components} predicted components."
        )
    if s is not None:
        lines += [
            "",
            "| class | " + " | ".join(CITYSCAPES_CLASSES) + " |",
            "|---" * (len(CITYSCAPES_CLASSES) + 1) + "|",
        ]
        lines.append("| IoU | " + " | ".join(_pct(v) for v in s.iou) + " |")
    lines += [f"\nwarning: {w}" for w in result.warnings]
    return "\n".join(lines)


def write_figures(result: EvalResult, source: FrameSource, folder: Path, title: str) -> dict[str, str]:
    """PR curve, ROC curve, F1 per tau and the qualitative grid, as PNG files in `folder`."""
    from m2a_training import plots

    written: dict[str, str] = {}
    if result.pixel is not None and result.pixel.positives and result.pixel.negatives:
        written["pr_curve"] = str(plots.plot_pr_curve(result.pixel, folder / "pr_curve.png", title))
        written["roc_curve"] = str(plots.plot_roc_curve(result.pixel, folder / "roc_curve.png", title))
    if result.components is not None:
        written["f1_per_tau"] = str(plots.plot_f1_per_tau(result.components, folder / "f1_per_tau.png", title))
    worst, best = pick_frames(result.frame_stats, result.options.grid_frames)
    if worst or best:
        rows = []
        for tag, stat in [("worst", s) for s in worst] + [("best", s) for s in best]:
            frame = source.frame(stat.index, image=True, again=True)
            title_row = f"{tag}: {frame.name} (pixel F1 {100 * stat.pixel_f1:.1f})"
            rows.append(plots.GridRow(title_row, frame.image, frame.score, frame.anomaly))
        written["qualitative"] = str(plots.plot_qualitative(rows, result.threshold, folder / "qualitative.png"))
    return written


# ----------------------------------------------------------------------------------------------------------
# Command line


def _scoring_config(args: argparse.Namespace) -> Any:
    from m2a_perception.model.scoring import TABLE3_ROWS, ScoringConfig

    fns = {"class_fn": "softmax", "mask_fn": "sigmoid", "post_fn": "identity"}
    if args.table3_row is not None:
        if not 0 <= args.table3_row < len(TABLE3_ROWS):
            raise ValueError(f"--table3-row must be 0..{len(TABLE3_ROWS) - 1}, got {args.table3_row}")
        fns = dict(zip(("class_fn", "mask_fn", "post_fn"), TABLE3_ROWS[args.table3_row]))
    for key in fns:
        if getattr(args, key) is not None:
            fns[key] = getattr(args, key)
    refine = args.refine if args.refine is not None else args.score not in ("max_logit", "energy")
    return ScoringConfig(
        score=args.score,
        refine=refine,
        flip_tta=args.flip_tta,
        resolution=args.resolution,
        **fns,
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=MODES, default="exact", help="pixel metrics: exact (default) or smiyc bins")
    parser.add_argument(
        "--track", choices=tuple(TRACKS), default=None, help="component size filters (default: the data set's)"
    )
    parser.add_argument("--threshold", type=float, default=None, help="component threshold (default: best pixel F1)")
    parser.add_argument("--skip-no-anomaly", action="store_true", help="leave out frames without anomaly pixels")
    parser.add_argument("--json", type=Path, default=Path("eval_out/metrics.json"), help="JSON output file")
    parser.add_argument("--figures", type=Path, default=None, help="folder for the PNGs (default: the JSON's)")
    parser.add_argument("--no-figures", action="store_true", help="write no PNG figures")
    parser.add_argument("--grid-frames", type=int, default=2, help="worst and best frames in the qualitative grid")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m2a-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    model = sub.add_parser("model", help="run a checkpoint on a data set and evaluate it")
    model.add_argument("--checkpoint", type=Path, required=True, help="our checkpoint or the authors' .pth / .pkl")
    model.add_argument("--dataset", choices=DATASETS, required=True)
    model.add_argument("--root", type=Path, default=None, help="the data set's folder (not for synthroad)")
    model.add_argument("--limit", type=int, default=None, help="evaluate only the first N frames")
    model.add_argument("--device", default="cpu")
    model.add_argument("--num-frames", type=int, default=20, help="synthroad: number of scenes")
    model.add_argument("--height", type=int, default=256, help="synthroad: scene height")
    model.add_argument("--width", type=int, default=512, help="synthroad: scene width")
    model.add_argument("--seed", type=int, default=None, help="synthroad: first scene seed")
    model.add_argument(
        "--score", default="mask2anomaly", choices=("mask2anomaly", "max_softmax", "max_logit", "entropy", "energy")
    )
    model.add_argument("--table3-row", type=int, default=None, help="Table-3 row 0..5 (f_C, f_M, post)")
    model.add_argument("--class-fn", choices=("identity", "softmax", "sigmoid"), default=None)
    model.add_argument("--mask-fn", choices=("identity", "softmax", "sigmoid"), default=None)
    model.add_argument("--post-fn", choices=("identity", "softmax"), default=None)
    model.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None, help="mask refinement")
    model.add_argument("--flip-tta", action="store_true", help="the authors' horizontal-flip TTA")
    model.add_argument("--resolution", choices=("full", "quarter"), default="full")
    model.add_argument("--short-edge", type=int, default=None, help="resize so the short side is N (authors: 1024)")
    model.add_argument("--max-long", type=int, default=None, help="cap on the long side (default 2 x short edge)")
    model.add_argument("--save-scores", type=Path, default=None, help="keep scores/NAME.npy + labels/NAME.png here")
    _common(model)
    scores = sub.add_parser("scores", help="evaluate precomputed score maps against label maps")
    scores.add_argument("--scores", type=Path, required=True, help="NAME.npy | NAME.png (16-bit) | NAME.tif")
    scores.add_argument("--labels", type=Path, required=True, help="NAME.png, 0 normal / 1 anomaly / 255 void")
    scores.add_argument("--images", type=Path, default=None, help="NAME.png|jpg, only for the qualitative grid")
    _common(scores)
    return parser


def _open_model_source(args: argparse.Namespace, cache: Path) -> tuple[ModelSource, str, dict[str, Any]]:
    from m2a_perception.model.checkpoint import build_model_from_checkpoint

    if args.dataset == "synthroad":
        kwargs = {"num_frames": args.num_frames, "height": args.height, "width": args.width}
        dataset: Benchmark | SynthRoadBenchmark = SynthRoadBenchmark(
            **kwargs, **({"seed": args.seed} if args.seed is not None else {})
        )
    else:
        if args.root is None:
            raise ValueError(f"--root is required for --dataset {args.dataset}")
        dataset = open_benchmark(args.dataset, args.root)
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        dataset = _Limited(dataset, args.limit)
    cfg = _scoring_config(args)
    model, report = build_model_from_checkpoint(args.checkpoint, device=args.device)
    (cache / "scores").mkdir(parents=True, exist_ok=True)
    (cache / "labels").mkdir(parents=True, exist_ok=True)
    source = ModelSource(model, dataset, cfg, cache_dir=cache, short_edge=args.short_edge, max_long=args.max_long)
    meta = {
        "source": "model",
        "checkpoint": str(args.checkpoint),
        "checkpoint_report": report.summary(),
        "dataset": {"name": args.dataset, "root": str(args.root) if args.root else None},
        "scoring": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
        "input_sizing": {"short_edge": args.short_edge, "max_long": args.max_long},
    }
    return source, args.dataset, meta


class _Limited:
    """The first `limit` frames of a data set."""

    def __init__(self, dataset: Any, limit: int) -> None:
        self.dataset = dataset
        self.limit = min(limit, len(dataset))
        self.names = list(dataset.names)[: self.limit]
        self.track = dataset.track
        self.kind = dataset.kind

    def __len__(self) -> int:
        return self.limit

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < self.limit:
            raise IndexError(index)
        return self.dataset[index]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate as the parsed arguments say; returns the JSON document (also written to --json)."""
    import m2a_perception

    temp = None
    try:
        if args.command == "model":
            cache = args.save_scores
            if cache is None:
                temp = tempfile.mkdtemp(prefix="m2a-eval-")
                cache = Path(temp)
            source, dataset, meta = _open_model_source(args, cache)
            track = args.track or source.dataset.track
        else:
            source = ScoreFolder(args.scores, args.labels, args.images)
            dataset = args.scores.name
            meta = {"source": "scores", "scores": str(args.scores), "labels": str(args.labels)}
            track = args.track or "anomaly"
        if args.grid_frames < 0:
            raise ValueError(f"--grid-frames must be >= 0, got {args.grid_frames}")
        options = EvalOptions(args.mode, track, args.threshold, args.skip_no_anomaly, args.grid_frames, not args.quiet)
        result = evaluate(source, options)
        meta["m2a_version"] = getattr(m2a_perception, "__version__", "unknown")
        meta["command"] = " ".join(["m2a-eval", *sys.argv[1:]]) if sys.argv else "m2a-eval"
        if isinstance(source, ModelSource):
            meta["model_seconds"] = round(source.seconds, 3)
        if not args.no_figures:
            folder = args.figures or args.json.parent
            meta["figures"] = write_figures(result, source, folder, dataset)
        document = to_json(result, meta)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
        print(markdown(result, dataset))
        print(f"\nJSON: {args.json}")
        return document
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Console entry point of `m2a-eval`; exits 2 with a one-line message on bad input."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"m2a-eval: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
