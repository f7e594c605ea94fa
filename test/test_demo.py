"""`m2a-demo` end to end on a tiny drive: through ROS 2 (the node in a child process) and offline (--no-ros)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import require_ros

from m2a_perception import bags
from m2a_perception.demo import ground_truth_image, main, parse_args, score_heatmap
from m2a_perception.weights import bundled_checkpoint

TINY = ["--frames", "4", "--height", "64", "--width", "128", "--play-rate", "1"]


def _check_outputs(out: Path, frames: int) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    run = summary["run"]
    assert run["frames_in"] == frames and run["frames_out"] + run["dropped"] == frames
    assert run["frames_out"] >= 1 and run["latency_ms"]["max"] >= run["latency_ms"]["median"] > 0
    with contextlib.closing(bags.open_reader(out / "result_bag")) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert counts == {"/m2a/anomaly/overlay": run["recorded"]["overlay"], "/m2a/anomaly/result": run["frames_out"]}
    overlays = sorted(out.glob("frame_*_overlay.png"))
    assert len(overlays) == run["recorded"]["overlay"]
    assert cv2.imread(str(overlays[0])).shape == (64, 128, 3)
    panels = sorted(out.glob("frame_*_panel.png"))
    assert panels and cv2.imread(str(panels[0])).shape == (128, 256, 3)
    if summary["export"]["mp4"]:
        video = cv2.VideoCapture(str(out / "overlay.mp4"))
        assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == frames  # one video frame per camera frame
        video.release()
    assert "frames in" in (out / "summary.txt").read_text()
    return summary


def test_demo_through_ros(tmp_path: Path, capsys) -> None:
    require_ros()
    assert main(["--out", str(tmp_path), *TINY]) == 0
    summary = _check_outputs(tmp_path, 4)
    run = summary["run"]
    assert run["mode"] == "ros" and run["node_received"] >= 3  # a best-effort input may lose a frame under load
    assert run["frames_out"] == run["node_received"] - run["node_dropped"]
    assert "ready: backend torch" in (tmp_path / "node.log").read_text()
    assert str(tmp_path.resolve()) in capsys.readouterr().out


def test_demo_offline_and_rerun_into_the_same_folder(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path), *TINY, "--no-ros"]) == 0
    first = _check_outputs(tmp_path, 4)
    assert first["run"]["mode"] == "offline" and first["run"]["dropped"] == 0
    assert main(["--out", str(tmp_path), "--frames", "2", "--height", "64", "--width", "128", "--no-ros"]) == 0
    _check_outputs(tmp_path, 2)  # the earlier run's bags and frames were replaced, not mixed in


def test_pictures() -> None:
    heat = score_heatmap(np.array([[0.0, 1.0, 2.0]], np.float32))
    assert heat.shape == (1, 3, 3) and (heat[0, 1] == heat[0, 2]).all() and not (heat[0, 0] == heat[0, 1]).all()
    truth = ground_truth_image(np.array([[0, 1, 255]], np.uint8))
    assert truth.tolist() == [[[0, 0, 0], [255, 0, 0], [128, 128, 128]]]


def test_the_demo_runs_the_bundled_model_unless_told_otherwise() -> None:
    default = parse_args([])
    assert default.checkpoint == str(bundled_checkpoint()) and default.threshold == 0.8  # the bundled model's
    assert parse_args(["--random-weights"]).checkpoint is None
    assert parse_args(["--random-weights"]).threshold == 0.5  # the node's default
    assert parse_args(["--threshold", "0.3"]).threshold == 0.3
    assert parse_args(["--checkpoint", "mine.pt"]).checkpoint == "mine.pt"
    with pytest.raises(SystemExit):
        parse_args(["--checkpoint", "mine.pt", "--random-weights"])
