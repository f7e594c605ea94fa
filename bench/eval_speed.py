"""Speed and memory of `m2a-eval scores` (exact mode) against a straightforward scikit-learn evaluation.

Writes N generated frames (default 100 at 1024x2048: float32 score maps NAME.npy, 0/1/255 label maps NAME.png,
with void regions, anomaly blobs and frames without anomalies) to a temporary folder, then runs in turn, each as
a child process so its time and peak memory are its own:
  - `m2a-eval scores --mode exact` (everything: pixel metrics, components at the best-F1 threshold, figures);
  - scikit-learn: load every frame, concatenate the non-void pixels, `average_precision_score` and one
    `roc_curve(drop_intermediate=False)` (FPR95 = first point with TPR >= 0.95, AUROC = `auc`).
Targets: m2a >= 10x faster, AuPRC and FPR95 equal to 1e-6, m2a's peak memory under 1 GiB.

    python bench/eval_speed.py [--frames 100 --height 1024 --width 2048 --keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def generate_frame(seed: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A plausible score map (smooth field + per-pixel noise, higher on anomalies) and its 0/1/255 labels."""
    rng = np.random.default_rng(seed)
    label = np.zeros((height, width), np.uint8)
    label[: height // 3] = 255  # sky / off-road void band
    scale = height / 1024
    for _ in range(int(rng.integers(0, 4))):  # some frames have no anomaly
        cy, cx = int(rng.integers(height // 2, height - 20)), int(rng.integers(40, width - 40))
        ay, ax = int(rng.integers(8, 80) * scale) + 2, int(rng.integers(8, 120) * scale) + 2
        cv2.ellipse(label, (cx, cy), (ax + 6, ay + 6), 0, 0, 360, 255, -1)  # void ring around each anomaly
        cv2.ellipse(label, (cx, cy), (ax, ay), 0, 0, 360, 1, -1)
    coarse = rng.normal(0.0, 1.5, (max(height // 32, 2), max(width // 32, 2))).astype(np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    noise = rng.normal(0.0, 0.7, (height, width)).astype(np.float32)
    logit = field - 3.0 + 5.0 * (label == 1) + noise
    score = (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    return score, label


def write_frames(folder: Path, frames: int, height: int, width: int) -> tuple[Path, Path]:
    scores, labels = folder / "scores", folder / "labels"
    scores.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for i in range(frames):
        score, label = generate_frame(i, height, width)
        np.save(scores / f"frame_{i:04d}.npy", score)
        Image.fromarray(label).save(labels / f"frame_{i:04d}.png")
    return scores, labels


def sklearn_baseline(scores: Path, labels: Path, out: Path) -> None:
    """The straightforward evaluation: every non-void pixel of the data set in memory at once."""
    from sklearn.metrics import auc, average_precision_score, roc_curve

    values, truth = [], []
    for path in sorted(scores.glob("*.npy")):
        score = np.load(path)
        label = np.asarray(Image.open(labels / f"{path.stem}.png"))
        valid = label != 255
        values.append(score[valid])
        truth.append(label[valid] == 1)
    y_score, y_true = np.concatenate(values), np.concatenate(truth)
    del values, truth
    auprc = average_precision_score(y_true, y_score)
    fpr, tpr, _ = roc_curve(y_true, y_score, drop_intermediate=False)
    result = {
        "AuPRC": float(auprc),
        "FPR95": float(fpr[np.argmax(tpr >= 0.95)]),
        "FPR95_interpolated": float(np.interp(0.95, tpr, fpr)),
        "AUROC": float(auc(fpr, tpr)),
        "pixels": int(y_true.size),
    }
    out.write_text(json.dumps(result))


def run_child(command: list[str]) -> dict[str, float]:
    """Run a command; its wall time, CPU time (user + system) and peak resident memory."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    output = process.stdout.read() if process.stdout else ""
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{output}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_mib": usage.ru_maxrss / 1024,
        "output": output,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--keep", type=Path, default=None, help="write the frames here and keep them")
    parser.add_argument("--baseline", nargs=3, metavar=("SCORES", "LABELS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline:
        sklearn_baseline(Path(args.baseline[0]), Path(args.baseline[1]), Path(args.baseline[2]))
        return

    folder = args.keep or Path(tempfile.mkdtemp(prefix="m2a-eval-bench-"))
    try:
        start = time.perf_counter()
        scores, labels = write_frames(folder, args.frames, args.height, args.width)
        took = time.perf_counter() - start
        print(f"wrote {args.frames} frames of {args.height}x{args.width} to {folder} in {took:.0f} s")
        m2a_eval = Path(sys.executable).parent / "m2a-eval"
        command = [str(m2a_eval)] if m2a_eval.exists() else [sys.executable, "-m", "m2a_training.evaluate"]
        ours_json = folder / "out" / "metrics.json"
        ours = run_child([*command, "scores", "--scores", str(scores), "--labels", str(labels), "--mode", "exact",
                          "--json", str(ours_json), "--quiet"])  # fmt: skip
        theirs_json = folder / "sklearn.json"
        theirs = run_child([sys.executable, __file__, "--baseline", str(scores), str(labels), str(theirs_json)])
        a, b = json.loads(ours_json.read_text()), json.loads(theirs_json.read_text())
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)

    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nmachine: {cpu}, Python {platform.python_version()}; load average at the end: {load} (shared CPUs)")
    print(f"data: {args.frames} frames of {args.height}x{args.width}, {b['pixels']:,} non-void pixels\n")
    print("| | wall s | CPU s | peak MiB | AuPRC | FPR95 | FPR95 interp. | AUROC |")
    print("|---|---|---|---|---|---|---|---|")
    for name, run, res in (("m2a-eval scores (exact, all figures)", ours, a), ("scikit-learn", theirs, b)):
        print(
            f"| {name} | {run['wall_s']:.1f} | {run['cpu_s']:.1f} | {run['peak_mib']:.0f} | {res['AuPRC']:.9f} "
            f"| {res['FPR95']:.9f} | {res['FPR95_interpolated']:.9f} | {res['AUROC']:.9f} |"
        )
    diffs = {k: abs(a[k] - b[k]) for k in ("AuPRC", "FPR95", "FPR95_interpolated", "AUROC")}
    speed = theirs["wall_s"] / ours["wall_s"]
    print(f"\nspeed-up (wall): {speed:.1f}x (CPU: {theirs['cpu_s'] / ours['cpu_s']:.1f}x); "
          f"m2a evaluation alone {a['seconds']:.1f} s, figures included in the wall time")  # fmt: skip
    print("max |m2a - sklearn|: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    ok = speed >= 10 and max(diffs["AuPRC"], diffs["FPR95"]) <= 1e-6 and ours["peak_mib"] < 1024
    print(f"targets (>= 10x, AuPRC/FPR95 within 1e-6, peak < 1 GiB): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
