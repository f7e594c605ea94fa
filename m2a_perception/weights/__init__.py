"""Weights shipped inside the package.

`m2a_small_synthroad.pt`: the small preset trained on generated road scenes by `bench/learning_check.py`
(stage 1 + stage 2 of `configs/synthroad_cpu.yaml`), in our checkpoint format; its ``extra`` records the command
that produced it and its held-out figures. It sees generated scenes only: a demonstration model, not one for
real cameras.
"""

from __future__ import annotations

from pathlib import Path

BUNDLED_SMALL_SYNTHROAD = "m2a_small_synthroad.pt"


def bundled_checkpoint() -> Path | None:
    """Path of the bundled small synthroad model, or None if this installation lacks it."""
    path = Path(__file__).resolve().parent / BUNDLED_SMALL_SYNTHROAD
    return path if path.is_file() else None


__all__ = ["BUNDLED_SMALL_SYNTHROAD", "bundled_checkpoint"]
