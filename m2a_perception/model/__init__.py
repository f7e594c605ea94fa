"""The Mask2Anomaly network, shared by the vehicle (inference) and the training side.

Shape glossary used in every docstring of this package:
    batch_size (B)      images per forward pass
    num_queries (Q)     object queries (100 in the paper)
    num_classes (K)     known classes (19 Cityscapes trainIds); class logits have K + 1 (no-object last)
    height, width       of the image given to the network; padded_* = rounded up to a multiple of 32
    "1/4 input"         stride 4 w.r.t. the padded image (mask logits, mask features)
Images are NCHW, RGB, float in 0-255 unless stated; all sequence tensors are batch-first.
"""

from .config import CITYSCAPES_CLASSES, PRESETS, BackboneConfig, DecoderConfig, M2AConfig, PixelDecoderConfig
from .mask2anomaly import M2AOutput, Mask2Anomaly, PredictionSet, build_model

__all__ = [
    "CITYSCAPES_CLASSES",
    "PRESETS",
    "BackboneConfig",
    "DecoderConfig",
    "M2AConfig",
    "M2AOutput",
    "Mask2Anomaly",
    "PixelDecoderConfig",
    "PredictionSet",
    "build_model",
]
