"""`m2a-demo`: run Mask2Anomaly over a generated small-obstacle sequence and write what it sees.

For every frame it writes the anomaly score as a heat map and an overlay (anomalous pixels in red over the
frame), plus one panel image (frame | ground truth | score | semantic map), then prints where they are.
Without `--checkpoint` it uses the small preset with random weights: the pipeline is real, the detections
are not (trained weights come with the training issue).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from m2a_perception.model import M2AConfig, Mask2Anomaly
from m2a_perception.model.scoring import ScoringConfig, anomaly_segmentation
from m2a_perception.synthroad import SceneConfig, colorize_semantic, generate_sequence

OVERLAY_RED = np.array([255, 0, 0], dtype=np.float32)


def score_heatmap(score: np.ndarray) -> np.ndarray:
    """(H, W) anomaly score -> (H, W, 3) uint8 RGB heat map; [0, 1] spans the colour map, values outside clip."""
    scaled = (np.clip(score, 0.0, 1.0) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(scaled, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)


def anomaly_overlay(frame: np.ndarray, mask: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Frame (H, W, 3) RGB with the pixels of `mask` (H, W) bool tinted red."""
    out = frame.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * OVERLAY_RED
    return out.astype(np.uint8)


def ground_truth_image(anomaly: np.ndarray) -> np.ndarray:
    """0/1/255 anomaly labels -> RGB: normal black, anomaly red, void grey."""
    out = np.zeros((*anomaly.shape, 3), np.uint8)
    out[anomaly == 1] = (255, 0, 0)
    out[anomaly == 255] = (128, 128, 128)
    return out


def build_demo_model(checkpoint: str | None) -> Mask2Anomaly:
    """The network to run: a checkpoint of any supported format, or the small preset with random weights."""
    if checkpoint:
        from m2a_perception.model.checkpoint import build_model_from_checkpoint

        model, report = build_model_from_checkpoint(checkpoint)
        print(report.summary())
        return model.eval()
    torch.manual_seed(0)
    print("no --checkpoint: small preset with RANDOM weights (the scores show the pipeline, not detections)")
    return Mask2Anomaly(M2AConfig.preset("small")).eval()


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def run(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = build_demo_model(args.checkpoint)
    scoring = ScoringConfig(flip_tta=args.flip_tta)
    sequence = generate_sequence(args.seed, args.frames, SceneConfig(height=args.height, width=args.width))
    times = []
    for index, scene in enumerate(sequence):
        start = time.perf_counter()
        score, semantic = anomaly_segmentation(model, scene.image, scoring)
        times.append(time.perf_counter() - start)
        mask = score > args.threshold
        np.save(out / f"frame_{index:04d}_score.npy", score)
        write_rgb(out / f"frame_{index:04d}_score.png", score_heatmap(score))
        write_rgb(out / f"frame_{index:04d}_overlay.png", anomaly_overlay(scene.image, mask))
        panel = np.concatenate(
            [
                np.concatenate([scene.image, ground_truth_image(scene.anomaly)], axis=1),
                np.concatenate([score_heatmap(score), colorize_semantic(semantic)], axis=1),
            ],
            axis=0,
        )
        write_rgb(out / f"frame_{index:04d}_panel.png", panel)
        print(
            f"frame {index + 1}/{args.frames}: {times[-1] * 1000:.0f} ms, score range "
            f"[{score.min():.3f}, {score.max():.3f}], {int(mask.sum())} px above {args.threshold}"
        )
    print(f"median {np.median(times) * 1000:.0f} ms per {args.height}x{args.width} frame")
    print(f"wrote {args.frames} frames (score .npy/.png, overlay .png, panel .png) to {out.resolve()}")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="m2a-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="output folder (created)")
    parser.add_argument("--frames", type=int, default=8, help="frames of the generated sequence")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--seed", type=int, default=7, help="scene seed (same seed, same sequence)")
    parser.add_argument("--checkpoint", default=None, help="model file (ours or the authors' .pth/.pkl)")
    parser.add_argument("--threshold", type=float, default=0.5, help="anomaly score above which a pixel is red")
    parser.add_argument("--flip-tta", action="store_true", help="average with the horizontally flipped frame")
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error(f"--frames must be >= 1, got {args.frames}")
    return args


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
