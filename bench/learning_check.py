"""Proof that the training recipe learns: the small preset, trained on generated road scenes on this CPU.

    nice -n 10 python bench/learning_check.py [--out outputs/learning_check] [--bundle FILE] [KEY=VALUE ...]

Trains stage 1 (inliers) and stage 2 (Anomaly Mix with the held-in "train" anomaly family + the mask contrastive
loss) with `configs/synthroad_cpu.yaml`, then evaluates both stages on a held-out generated set whose anomalies
come from the held-out "eval" family (no shape or texture in common with the pasted ones) and checks:

    mIoU over the generated classes >= 0.6                 (stage-2 network)
    AuPRC of the Mask2Anomaly score >= 2 x max-softmax       (stage-2 network's score vs the max-softmax of the
                                                               network without outlier exposure, stage 1)
    AuPRC after stage 2 > AuPRC after stage 1                (Mask2Anomaly score)

"Max-softmax" is the baseline of the paper's supplementary Tables 1-2 (Hendrycks' max softmax probability of an
ordinary segmentation network, no outlier exposure), hence stage 1's. The ratio with max-softmax computed on
the stage-2 network itself is printed too: the supplementary's Table 3 finds that one close to 1 (84.24 vs
85.56 average AuPRC), because the softmax is then taken over the same marginalised class map.

Prints every figure and the training wall time, writes them to <out>/results.json, and exits 1 if a target is
missed. `--bundle FILE` also writes the stage-2 model (weights alone, our checkpoint format) to FILE.
A benchmark, not a test: it takes about a quarter of an hour and is not run by `make test`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from m2a_perception.model.checkpoint import build_model_from_checkpoint, save_checkpoint
from m2a_perception.model.scoring import ScoringConfig
from m2a_training.train import main as train_main
from m2a_training.train_config import FINAL_MODEL, SynthRoadSection, ValidationSetSection, load_stages
from m2a_training.validation import evaluate_frames, validation_frames

ROOT = Path(__file__).resolve().parents[1]
SCORES = {
    "m2a": ScoringConfig(),  # the method: 1 - max_k sum_q p_q(k) sigmoid(m_q), mask refinement on
    "m2a_unrefined": ScoringConfig(refine=False),
    "max_softmax": ScoringConfig(score="max_softmax", refine=False),  # the per-pixel baseline
}
TARGET_MIOU = 0.6
TARGET_RATIO = 2.0


def evaluate(path: Path, images: int, height: int, width: int, seed: int) -> dict[str, float]:
    """mIoU and every score's AuPRC / FPR95 on the held-out generated set."""
    model, _ = build_model_from_checkpoint(path)
    section = ValidationSetSection(
        dataset="synthroad",
        synthroad=SynthRoadSection(
            num_images=images,
            height=height,
            width=width,
            first_seed=seed,
            num_anomalies=2,
            anomaly_family="eval",
        ),
    )
    return evaluate_frames(model, validation_frames(section), model.config.num_classes, SCORES, per_class=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "synthroad_cpu.yaml"))
    parser.add_argument("--out", default="outputs/learning_check", help="training output folder (must be new)")
    parser.add_argument("--bundle", default=None, help="also write the stage-2 weights here")
    parser.add_argument("--eval-images", type=int, default=50, help="held-out generated scenes")
    parser.add_argument("--eval-height", type=int, default=256)
    parser.add_argument("--eval-width", type=int, default=512)
    parser.add_argument("--eval-seed", type=int, default=2_000_000, help="first scene seed of the held-out set")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (see m2a-train)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = [f"train.output_dir={args.out}", *args.overrides]
    stages = load_stages(args.config, overrides)
    if len(stages) != 2:
        raise SystemExit(f"{args.config} must have two stages (inliers, outlier exposure), got {len(stages)}")
    command = "python " + " ".join(shlex.quote(a) for a in [f"bench/{Path(__file__).name}", *sys.argv[1:]])
    print(f"learning check: {command}\n  torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)

    start = time.perf_counter()
    if train_main(["train", "--config", args.config, *overrides]) != 0:
        return 2
    train_seconds = time.perf_counter() - start
    stage_seconds = {}
    for stage in stages:
        lines = (Path(stage.train.output_dir) / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines if '"time/iter_s"' in line]
        last = records[-1]
        stage_seconds[stage.name] = last["time/iter_s"] * last["iteration"]

    results: dict[str, dict[str, float]] = {}
    eval_start = time.perf_counter()
    for stage in stages:
        path = Path(stage.train.output_dir) / FINAL_MODEL
        results[stage.name] = evaluate(path, args.eval_images, args.eval_height, args.eval_width, args.eval_seed)
    eval_seconds = time.perf_counter() - eval_start

    first, second = (s.name for s in stages)
    final, before = results[second], results[first]
    ratio_same = final["m2a/auprc"] / max(final["max_softmax/auprc"], 1e-12)
    ratio_stage1 = final["m2a/auprc"] / max(before["max_softmax/auprc"], 1e-12)
    checks = {
        f"mIoU over the generated classes >= {TARGET_MIOU} (stage 2)": final["miou_present"] >= TARGET_MIOU,
        f"AuPRC m2a (stage 2) >= {TARGET_RATIO} x max-softmax of the network without outlier exposure (stage 1)": (
            ratio_stage1 >= TARGET_RATIO
        ),
        "AuPRC m2a: stage 2 > stage 1": final["m2a/auprc"] > before["m2a/auprc"],
    }
    print(f"\nheld-out set: {args.eval_images} generated {args.eval_height}x{args.eval_width} scenes, 'eval' family")
    keys = sorted({k for r in results.values() for k in r}, key=lambda k: (k.startswith("iou/"), k))
    print(f"{'figure':<26}" + "".join(f"{name:>12}" for name in results))
    for key in keys:
        print(f"{key:<26}" + "".join(f"{results[name].get(key, float('nan')):>12.4f}" for name in results))
    print(f"AuPRC ratio m2a (stage 2) / max-softmax (stage 1): {ratio_stage1:.2f}")
    print(f"AuPRC ratio m2a / max-softmax, both on the stage-2 network: {ratio_same:.2f} (the paper's Table 3 has ~1)")
    print(
        f"training wall time {train_seconds:.0f} s ({train_seconds / 60:.1f} min; "
        + ", ".join(f"{k} {v:.0f} s in its loop" for k, v in stage_seconds.items())
        + f"), evaluation {eval_seconds:.0f} s"
    )
    for label, ok in checks.items():
        print(f"  [{'ok' if ok else 'MISSED'}] {label}")
    summary = {
        "command": command,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "train_seconds": train_seconds,
        "stage_loop_seconds": stage_seconds,
        "eval_seconds": eval_seconds,
        "eval_set": {
            "images": args.eval_images,
            "height": args.eval_height,
            "width": args.eval_width,
            "first_seed": args.eval_seed,
            "family": "eval",
        },  # fmt: skip
        "results": results,
        "auprc_ratio_vs_stage1_max_softmax": ratio_stage1,
        "auprc_ratio_same_network": ratio_same,
        "checks": checks,
    }
    out = Path(args.out)
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    if args.bundle:
        model, report = build_model_from_checkpoint(Path(stages[1].train.output_dir) / FINAL_MODEL)
        extra = {
            "produced_by": command,
            "config": str(Path(args.config).name),
            "held_out": {k: float(v) for k, v in final.items() if np.isfinite(v)},
            "train_seconds": float(train_seconds),
        }
        names = list(report.class_names)
        save_checkpoint(model, args.bundle, class_names=names, extra=extra)
        print(f"bundled weights: {args.bundle} ({Path(args.bundle).stat().st_size / 1e6:.1f} MB)")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
