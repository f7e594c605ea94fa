"""Forward-pass time of the paper's Mask2Anomaly on the CPU against Hugging Face's Mask2Former-R50.

Both networks have the same dimensions (ResNet-50, 256-wide pixel decoder with 6 deformable layers, 100
queries, 9 decoder layers, 19 classes); ours additionally runs the background branch of global mask
attention. Runs alternate between the two models in one process so both see the same machine state.
Target: our median <= 0.7x theirs at 512x1024.

    python bench/model_speed.py [--height 512 --width 1024 --runs 5 --threads N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from m2a_perception.model import M2AConfig, Mask2Anomaly


def build_hf_mask2former() -> torch.nn.Module:
    """Mask2FormerForUniversalSegmentation with a ResNet-50 backbone of the paper's dimensions."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, ResNetConfig
    from transformers.utils import logging

    logging.set_verbosity_error()  # it warns that ResNet is not among its pretrained backbones
    backbone = ResNetConfig(
        embedding_size=64,
        hidden_sizes=[256, 512, 1024, 2048],
        depths=[3, 4, 6, 3],
        layer_type="bottleneck",
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    # decoder_layers=10 builds 9 layers plus the initial prediction, like the authors' DEC_LAYERS=10.
    config = Mask2FormerConfig(backbone_config=backbone, num_queries=100, decoder_layers=10, num_labels=19)
    return Mask2FormerForUniversalSegmentation(config).eval()


def time_once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per model (after one warm-up each)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    ours = Mask2Anomaly(M2AConfig()).eval()
    theirs = build_hf_mask2former()
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    images = torch.rand(1, 3, args.height, args.width) * 255  # ours normalises internally
    normalised = ours.preprocess(images)  # theirs takes normalised pixels

    def run_ours() -> None:
        ours(images)

    def run_theirs() -> None:
        theirs(pixel_values=normalised)

    with torch.inference_mode():
        run_ours()
        run_theirs()
        ours_times, theirs_times = [], []
        for _ in range(args.runs):
            ours_times.append(time_once(run_ours))
            theirs_times.append(time_once(run_theirs))

    ours_median, theirs_median = statistics.median(ours_times), statistics.median(theirs_times)
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, input 1x3x{args.height}x{args.width}, {args.runs} runs each"
    )
    print(
        f"m2a Mask2Anomaly (GMA)          {n_ours:>11,} params  median {ours_median * 1000:8.1f} ms  "
        f"runs {[round(t * 1000) for t in ours_times]}"
    )
    print(
        f"transformers Mask2Former-R50    {n_theirs:>11,} params  median {theirs_median * 1000:8.1f} ms  "
        f"runs {[round(t * 1000) for t in theirs_times]}"
    )
    ratio = ours_median / theirs_median
    verdict = "meets" if ratio <= 0.7 else "MISSES"
    print(f"ratio ours/theirs = {ratio:.3f} ({verdict} the <= 0.7 target)")


if __name__ == "__main__":
    main()
