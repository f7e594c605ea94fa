"""`m2a-demo` end to end on a tiny sequence: every frame's files are written and readable."""

from __future__ import annotations

import cv2
import numpy as np

from m2a_perception.demo import anomaly_overlay, main


def test_demo_writes_every_frame(tmp_path, capsys) -> None:
    assert main(["--out", str(tmp_path), "--frames", "2", "--height", "64", "--width", "128"]) == 0
    for index in range(2):
        score = np.load(tmp_path / f"frame_{index:04d}_score.npy")
        assert score.shape == (64, 128) and score.dtype == np.float32
        overlay = cv2.imread(str(tmp_path / f"frame_{index:04d}_overlay.png"))
        assert overlay.shape == (64, 128, 3)
        panel = cv2.imread(str(tmp_path / f"frame_{index:04d}_panel.png"))
        assert panel.shape == (128, 256, 3)
    assert str(tmp_path.resolve()) in capsys.readouterr().out


def test_overlay_tints_only_masked_pixels() -> None:
    frame = np.full((2, 2, 3), 100, np.uint8)
    mask = np.array([[True, False], [False, False]])
    out = anomaly_overlay(frame, mask, alpha=0.5)
    assert out[0, 0].tolist() == [177, 50, 50]
    assert (out[~mask] == 100).all()
