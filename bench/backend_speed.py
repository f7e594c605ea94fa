"""Per-backend latency (median, p99) and throughput of the whole frame -> Result path, on whatever is here.

CPU: ONNX Runtime (the exported graph) against torch, both fp32. GPU: torch fp32, torch fp16, torch fp16 replayed
as a CUDA graph, and, where installed, ONNX Runtime (CUDA provider) and TensorRT fp16. Each size gets the paper's
r50 model with random weights (speed does not depend on them), exported once to a temporary folder; frames are
generated road scenes at the model's size. Backends alternate run by run, so all see the same machine state.
Target on a GPU: torch fp16 >= 5x torch fp32 at 1024x2048.

    python bench/backend_speed.py [--sizes 512x1024 1024x2048] [--preset r50] [--runs 10] [--threads N]
                                  [--resolution full|quarter] [--only torch onnxruntime ...]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from m2a_perception.backends.base import BackendConfig, BackendError, Result
from m2a_perception.backends.onnxruntime_backend import OnnxRuntimeBackend
from m2a_perception.backends.torch_backend import TorchBackend
from m2a_perception.model import M2AConfig, Mask2Anomaly
from m2a_perception.model.checkpoint import save_checkpoint
from m2a_perception.model.fused import FusedMask2Anomaly, GraphSpec
from m2a_perception.model.scoring import ScoringConfig
from m2a_perception.synthroad import SceneConfig, generate_scene
from m2a_training.export import parse_size
from m2a_training.export_graph import export_onnx


class CudaGraphTorch:
    """torch fp16 with the fused network + scoring captured once as a CUDA graph and replayed per frame."""

    name = "torch fp16 + CUDA graph"

    def __init__(self, model: Mask2Anomaly, spec: GraphSpec, device: torch.device) -> None:
        self.fused = FusedMask2Anomaly(model.to(device, torch.float16).eval(), spec).eval()
        self.image = torch.zeros(1, 3, *spec.input_size, device=device)
        self.device = device
        with torch.inference_mode():
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(2):  # warm up kernels and the allocator outside the capture
                    self.fused(self.image.half())
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.outputs = self.fused(self.image.half())

    def infer(self, frame: np.ndarray) -> Result:
        t0 = time.perf_counter()
        with torch.inference_mode():
            self.image.copy_(torch.from_numpy(frame).to(self.device).permute(2, 0, 1)[None].float())
            torch.cuda.synchronize(self.device)
            t1 = time.perf_counter()
            self.graph.replay()
            torch.cuda.synchronize(self.device)
            t2 = time.perf_counter()
            score, labels = (t[0].cpu().numpy() for t in self.outputs)
        t3 = time.perf_counter()
        timings = {"preprocess": t1 - t0, "inference": t2 - t1, "postprocess": t3 - t2}
        return Result(anomaly_score=score, semantic=labels.astype(np.uint8), timings=timings)


def make_backends(
    size: tuple[int, int],
    preset: str,
    scoring: ScoringConfig,
    folder: Path,
    only: list[str] | None,
    threads: int | None,
) -> dict[str, Callable[[np.ndarray], Result]]:
    """name -> infer function, for every backend this machine can run."""
    torch.manual_seed(0)
    model = Mask2Anomaly(M2AConfig.preset(preset)).eval()
    checkpoint = save_checkpoint(model, folder / f"{preset}.pt")
    spec = GraphSpec(input_size=size, scoring=scoring)
    onnx_path = folder / f"{preset}-{size[0]}x{size[1]}.onnx"
    start = time.perf_counter()
    export_onnx(model, spec, onnx_path)
    print(f"  exported {onnx_path.name} in {time.perf_counter() - start:.1f} s")

    def config(backend: str, path: Path, **kw: object) -> BackendConfig:
        return BackendConfig(
            backend=backend, model_path=str(path), preset=preset, input_size=size, scoring=scoring, **kw
        )

    candidates: list[tuple[str, Callable[[], object]]] = []
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        candidates += [
            ("torch fp32", lambda: TorchBackend(config("torch", checkpoint, device="cuda"))),
            ("torch fp16", lambda: TorchBackend(config("torch", checkpoint, device="cuda", fp16=True))),
            ("torch fp16 + CUDA graph", lambda: CudaGraphTorch(copy.deepcopy(model), spec, cuda)),
            ("onnxruntime cuda fp32", lambda: OnnxRuntimeBackend(config("onnxruntime", onnx_path, device="cuda"))),
            ("tensorrt fp16", lambda: _tensorrt(config("tensorrt", onnx_path, device="cuda", fp16=True), folder)),
        ]
    else:
        candidates += [
            ("torch cpu fp32", lambda: TorchBackend(config("torch", checkpoint))),
            ("onnxruntime cpu fp32", lambda: OnnxRuntimeBackend(config("onnxruntime", onnx_path), threads=threads)),
        ]
    backends = {}
    for name, create in candidates:
        if only and not any(word in name for word in only):
            continue
        try:
            backend = create()
        except BackendError as e:
            print(f"  skipped {name}: {e}")
            continue
        backends[name] = backend.infer
    return backends


def _tensorrt(config: BackendConfig, folder: Path) -> object:
    from m2a_perception.backends.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(config, cache_dir=folder / "engines")


def bench_size(
    size: tuple[int, int], backends: dict[str, Callable[[np.ndarray], Result]], runs: int, warmup: int
) -> dict[str, dict[str, float]]:
    """Alternate the backends over `runs` frames after `warmup` frames each; stats in milliseconds."""
    frames = [generate_scene(seed, SceneConfig(height=size[0], width=size[1])).image for seed in range(runs + warmup)]
    latencies: dict[str, list[float]] = {name: [] for name in backends}
    stages: dict[str, list[float]] = {name: [] for name in backends}
    for index, frame in enumerate(frames):
        for name, infer in backends.items():
            start = time.perf_counter()
            result = infer(frame)
            elapsed = time.perf_counter() - start
            if index >= warmup:
                latencies[name].append(elapsed)
                stages[name].append(result.timings["inference"])
    stats = {}
    for name, values in latencies.items():
        ms = np.array(values) * 1e3
        stats[name] = {
            "median_ms": float(np.median(ms)),
            "p99_ms": float(np.percentile(ms, 99)),
            "fps": float(1e3 / ms.mean()),
            "network_median_ms": float(statistics.median(stages[name]) * 1e3),
        }
    return stats


def describe_hardware() -> str:
    cpu = platform.processor() or platform.machine()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    text = f"{cpu}, {os.cpu_count()} cores (load average {load}), {torch.get_num_threads()} torch threads, "
    text += f"torch {torch.__version__}"
    try:
        import onnxruntime

        text += f", onnxruntime {onnxruntime.__version__}"
    except ImportError:
        pass
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=[(512, 1024), (1024, 2048)])
    parser.add_argument("--preset", default="r50", choices=["r50", "small"])
    parser.add_argument("--runs", type=int, default=10, help="timed frames per backend and size")
    parser.add_argument("--warmup", type=int, default=1, help="untimed frames first")
    parser.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--resolution", choices=["full", "quarter"], default="full", help="scoring resolution")
    parser.add_argument("--only", nargs="+", default=None, help="backends whose name contains one of these words")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    scoring = ScoringConfig(resolution=args.resolution)
    print(f"hardware: {describe_hardware()}")
    print(f"model: {args.preset} (random weights), scoring {args.resolution} resolution, {args.runs} runs")
    with tempfile.TemporaryDirectory(prefix="m2a-bench-") as tmp:
        for size in args.sizes:
            print(f"{size[0]}x{size[1]}:")
            backends = make_backends(size, args.preset, scoring, Path(tmp), args.only, args.threads)
            stats = bench_size(size, backends, args.runs, args.warmup)
            baseline = next(iter(stats.values()))["median_ms"] if stats else 0.0
            for name, s in stats.items():
                print(
                    f"  {name:26s} median {s['median_ms']:9.1f} ms  p99 {s['p99_ms']:9.1f} ms  "
                    f"{s['fps']:7.2f} frames/s  network {s['network_median_ms']:9.1f} ms  "
                    f"speed-up vs first {baseline / s['median_ms']:5.2f}x"
                )


if __name__ == "__main__":
    main()
