"""`m2a-export`: checkpoint -> ONNX (network + scoring fused) -> TensorRT engine, and the ONNX parity check.

    m2a-export onnx CHECKPOINT -o model.onnx [--size 1024x2048] [--resolution full|quarter] [--semantic labels|scores]
                                             [--score ...] [--class-fn ...] [--mask-fn ...] [--post-fn ...]
                                             [--no-refine] [--flip-tta]
    m2a-export check model.onnx CHECKPOINT [--frames 4] [--fp16] [--threads N]
    m2a-export engine model.onnx -o model.engine [--fp32] [--workspace-gib 4] [--timing-cache FILE] [--device cuda:0]

Each file gets a JSON sidecar (`model.onnx.json`, `model.engine.json`) that the backends check before use. `check`
exits with 1 when the fp32 graph misses its targets (score relative error <= 1e-3, >= 99.9 % identical labels) or
the fp16 graph gives a non-finite output; `engine` needs a GPU and TensorRT >= 8.6.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from m2a_perception.model.fused import SEMANTIC_KINDS, GraphSpec
from m2a_perception.model.scoring import CLASS_FNS, MASK_FNS, POST_FNS, RESOLUTIONS, SCORES, ScoringConfig

__all__ = ["build_parser", "main", "parse_size"]


def parse_size(text: str) -> tuple[int, int]:
    """'1024x2048' -> (1024, 2048): height x width, positive multiples of 32."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HEIGHTxWIDTH, e.g. 1024x2048, got {text!r}") from None
    if height < 32 or width < 32 or height % 32 or width % 32:
        raise argparse.ArgumentTypeError(f"size must be positive multiples of 32, got {height}x{width}")
    return height, width


def _cmd_onnx(args: argparse.Namespace) -> int:
    from m2a_perception.backends.sidecar import file_sha256
    from m2a_perception.model.checkpoint import build_model_from_checkpoint
    from m2a_training.export_graph import export_onnx

    scoring = ScoringConfig(
        score=args.score,
        class_fn=args.class_fn,
        mask_fn=args.mask_fn,
        post_fn=args.post_fn,
        refine=not args.no_refine,
        flip_tta=args.flip_tta,
        resolution=args.resolution,
        chunk_queries=None,
    )
    spec = GraphSpec(input_size=args.size, semantic=args.semantic, scoring=scoring)
    model, report = build_model_from_checkpoint(args.checkpoint)
    for note in report.notes:
        print(f"note: {note}")
    checkpoint = {"file": args.checkpoint.name, "sha256": file_sha256(args.checkpoint), "format": report.source_format}
    sidecar = export_onnx(model, spec, args.output, checkpoint=checkpoint)
    outputs = ", ".join(f"{t['name']} {t['dtype']} {t['shape']}" for t in sidecar["outputs"])
    print(f"wrote {args.output} ({sidecar['onnx_bytes'] / 2**20:.1f} MiB, opset {sidecar['opset']}) and its sidecar")
    print(f"input image float32 {sidecar['inputs'][0]['shape']} RGB 0-255; outputs {outputs}")
    print("operators: " + ", ".join(f"{op} {n}" for op, n in sidecar["operators"].items()))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from m2a_perception.backends.sidecar import file_sha256, read_onnx_sidecar, sidecar_path
    from m2a_perception.model.checkpoint import build_model_from_checkpoint
    from m2a_training.export_parity import generated_frames, run_parity

    sidecar = read_onnx_sidecar(sidecar_path(args.onnx))
    recorded = sidecar.data.get("checkpoint", {}).get("sha256")
    if recorded and recorded != file_sha256(args.checkpoint):
        print(f"error: {args.onnx} was exported from another checkpoint (sha256 {recorded[:16]}...)", file=sys.stderr)
        return 2
    model, _ = build_model_from_checkpoint(args.checkpoint)
    frames = generated_frames(sidecar.spec.input_size, args.frames, seed=args.seed)
    ok = True
    for fp16 in (False, True) if args.fp16 else (False,):
        report = run_parity(model, args.onnx, frames, fp16=fp16, threads=args.threads)
        print(report.summary())
        ok = ok and report.passed
    return 0 if ok else 1


def _cmd_engine(args: argparse.Namespace) -> int:
    from m2a_perception.backends.engine_cache import BuildOptions, checked_onnx, default_cache_dir, write_engine
    from m2a_perception.backends.tensorrt_build import TensorRTTools

    onnx = checked_onnx(args.onnx)
    tools = TensorRTTools(args.device)
    timing_cache = args.timing_cache if args.timing_cache is not None else default_cache_dir() / "timing.cache"
    options = BuildOptions(
        fp16=not args.fp32, workspace_bytes=int(args.workspace_gib * 2**30), timing_cache=timing_cache
    )
    runtime = tools.runtime_info()
    print(f"building {args.output} from {args.onnx} with {runtime.describe()}, {options.precision} ...")
    meta = write_engine(args.output, tools.build(args.onnx, options), onnx, runtime, options)
    print(f"wrote {args.output} ({meta['engine_bytes'] / 2**20:.1f} MiB) and its sidecar; timing cache {timing_cache}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `m2a-export` command line."""
    parser = argparse.ArgumentParser(
        prog="m2a-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("onnx", help="checkpoint -> ONNX (opset 17, batch 1, fixed size) + sidecar")
    p.add_argument("checkpoint", type=Path, help="our checkpoint, or the authors' detectron2 .pth/.pkl (r50)")
    p.add_argument("-o", "--output", type=Path, required=True, help="the .onnx file to write")
    p.add_argument("--size", type=parse_size, default=(1024, 2048), help="input HEIGHTxWIDTH (default 1024x2048)")
    p.add_argument("--resolution", choices=RESOLUTIONS, default="full", help="outputs at input size or 1/4 of it")
    p.add_argument("--semantic", choices=SEMANTIC_KINDS, default="labels", help="int32 labels or float class scores")
    p.add_argument("--score", choices=SCORES, default="mask2anomaly")
    p.add_argument("--class-fn", choices=CLASS_FNS, default="softmax")
    p.add_argument("--mask-fn", choices=MASK_FNS, default="sigmoid")
    p.add_argument("--post-fn", choices=POST_FNS, default="identity")
    p.add_argument("--no-refine", action="store_true", help="leave out the mask refinement")
    p.add_argument("--flip-tta", action="store_true", help="fuse the flip test-time augmentation (2 passes)")
    p.set_defaults(run=_cmd_onnx)

    p = sub.add_parser("check", help="ONNX Runtime vs PyTorch on generated road scenes")
    p.add_argument("onnx", type=Path)
    p.add_argument("checkpoint", type=Path, help="the checkpoint the ONNX file was exported from")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fp16", action="store_true", help="also run the graph converted to fp16 (finiteness)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    p.set_defaults(run=_cmd_check)

    p = sub.add_parser("engine", help="ONNX -> TensorRT engine + sidecar (needs a GPU and TensorRT >= 8.6)")
    p.add_argument("onnx", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="the .engine file to write")
    p.add_argument("--fp32", action="store_true", help="no fp16 kernels")
    p.add_argument("--workspace-gib", type=float, default=4.0, help="builder workspace limit (GiB)")
    p.add_argument("--timing-cache", type=Path, default=None, help="reused across builds (default: in the cache)")
    p.add_argument("--device", default="cuda", help="CUDA device to build for")
    p.set_defaults(run=_cmd_engine)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `m2a-export`."""
    from m2a_perception.backends.base import BackendError
    from m2a_perception.backends.sidecar import SidecarError
    from m2a_perception.model.checkpoint import CheckpointError
    from m2a_training.export_graph import ExportError

    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (BackendError, CheckpointError, ExportError, FileNotFoundError, SidecarError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
