"""Post-processing: threshold, instances, road gating, temporal fusion, colour images (pure numpy, no ROS)."""

from __future__ import annotations

import numpy as np
import pytest

from m2a_perception.backends import Result
from m2a_perception.classes import CITYSCAPES_PALETTE
from m2a_perception.postprocess import (
    FrameOutputs,
    PostprocessConfig,
    Postprocessor,
    class_name,
    colorize,
)

H, W = 60, 100
ROAD, SIDEWALK, BUILDING, SKY, CAR = 0, 1, 2, 10, 13


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """frame, semantic (sky on top, road below), score with two blobs: one on the road, one in the sky."""
    frame = np.full((H, W, 3), 90, np.uint8)
    semantic = np.full((H, W), ROAD, np.uint8)
    semantic[:25] = SKY
    score = np.full((H, W), 0.1, np.float32)
    score[35:45, 40:60] = 0.9  # on the road: 10 x 20 = 200 px
    semantic[35:45, 40:60] = CAR  # the network calls the obstacle something
    score[5:10, 10:16] = 0.8  # in the sky: 5 x 6 = 30 px, far from the road
    return frame, semantic, score


def _run(config: PostprocessConfig, score=None, semantic=None, stamp: float = 0.0) -> FrameOutputs:
    frame, sem, sc = _scene()
    score = sc if score is None else score
    semantic = sem if semantic is None else semantic
    return Postprocessor(config).process(frame, Result(score, semantic, {}), stamp)


def test_mask_and_instances() -> None:
    out = _run(PostprocessConfig(threshold=0.5, min_instance_area=20))
    assert out.anomaly_mask.dtype == np.uint8 and set(np.unique(out.anomaly_mask)) == {0, 255}
    assert int((out.anomaly_mask == 255).sum()) == 200 + 30
    assert [i.area for i in out.instances] == [200, 30]  # largest first
    big = out.instances[0]
    assert big.bbox == (40, 35, 20, 10)
    assert big.centroid == pytest.approx((49.5, 39.5))
    assert big.max_score == pytest.approx(0.9) and big.mean_score == pytest.approx(0.9)
    assert big.semantic_class == ROAD  # stands on the road although its own pixels are "car"
    assert class_name(big.semantic_class) == "road"
    assert out.instances[1].semantic_class == SKY
    assert out.threshold == 0.5


def test_min_instance_area_drops_small_regions_from_instances_only() -> None:
    out = _run(PostprocessConfig(min_instance_area=31))
    assert [i.area for i in out.instances] == [200]
    assert int((out.anomaly_mask == 255).sum()) == 230  # the per-pixel mask keeps the small region


def test_threshold_is_strict_and_may_be_negative() -> None:
    _, _, score = _scene()
    assert not (_run(PostprocessConfig(threshold=0.9)).anomaly_mask == 255).any()
    out = _run(PostprocessConfig(threshold=-1.0, min_instance_area=1), score=score - 2.0)  # max 0.9 - 2 = -1.1
    assert int((out.anomaly_mask == 255).sum()) == 0
    out = _run(PostprocessConfig(threshold=-1.5, min_instance_area=1), score=score - 2.0)
    assert int((out.anomaly_mask == 255).sum()) == 230


def test_road_gating_keeps_regions_on_or_next_to_the_road() -> None:
    out = _run(PostprocessConfig(road_gating=True, gating_dilation_px=3, min_instance_area=20))
    assert [i.area for i in out.instances] == [200]
    assert int((out.anomaly_mask == 255).sum()) == 200
    # a region in the sky but within the dilation distance of the road counts as "next to" it
    _, semantic, score = _scene()
    score[20:23, 70:80] = 0.9  # rows 20-22; the road starts at row 25
    near = _run(PostprocessConfig(road_gating=True, gating_dilation_px=3, min_instance_area=20), score=score)
    assert sorted(i.area for i in near.instances) == [30, 200]
    far = _run(PostprocessConfig(road_gating=True, gating_dilation_px=1, min_instance_area=20), score=score)
    assert [i.area for i in far.instances] == [200]
    # sidewalk counts as drivable too
    semantic[:25] = SIDEWALK
    side = _run(PostprocessConfig(road_gating=True, gating_dilation_px=1, min_instance_area=20), semantic=semantic)
    assert sorted(i.area for i in side.instances) == [30, 200]


def test_temporal_fusion_is_an_ema_and_resets_on_time_jumps() -> None:
    frame = np.zeros((4, 4, 3), np.uint8)
    sem = np.zeros((4, 4), np.uint8)
    post = Postprocessor(PostprocessConfig(temporal_frames=3, temporal_max_gap_s=0.5, threshold=0.5))
    alpha = 2.0 / (3 + 1)

    def step(value: float, stamp: float) -> float:
        out = post.process(frame, Result(np.full((4, 4), value, np.float32), sem, {}), stamp)
        return float(out.anomaly_score[0, 0])

    assert step(1.0, 10.0) == pytest.approx(1.0)  # first frame: as is
    assert step(0.0, 10.1) == pytest.approx(1.0 - alpha)
    assert step(0.0, 10.2) == pytest.approx((1.0 - alpha) ** 2)
    assert step(0.0, 11.0) == pytest.approx(0.0)  # 0.8 s gap > 0.5: restart
    assert step(1.0, 11.1) == pytest.approx(alpha)
    assert step(0.0, 11.0) == pytest.approx(0.0)  # backwards in time: restart
    assert post.resets == 2
    post.reset()
    assert step(0.7, 11.05) == pytest.approx(0.7)
    # a new image size restarts too
    out = post.process(np.zeros((2, 2, 3), np.uint8), Result(np.zeros((2, 2), np.float32), sem[:2, :2], {}), 11.1)
    assert out.anomaly_score.shape == (2, 2) and post.resets == 3


def test_temporal_fusion_off_returns_the_score_itself() -> None:
    frame, semantic, score = _scene()
    out = Postprocessor(PostprocessConfig(temporal_frames=0)).process(frame, Result(score, semantic, {}), 1.0)
    assert out.anomaly_score is score


def test_configure_restarts_fusion_only_when_its_settings_change() -> None:
    frame = np.zeros((2, 2, 3), np.uint8)
    sem = np.zeros((2, 2), np.uint8)
    post = Postprocessor(PostprocessConfig(temporal_frames=3))
    post.process(frame, Result(np.ones((2, 2), np.float32), sem, {}), 0.0)
    post.configure(PostprocessConfig(temporal_frames=3, threshold=0.2))
    out = post.process(frame, Result(np.zeros((2, 2), np.float32), sem, {}), 0.1)
    assert out.anomaly_score[0, 0] == pytest.approx(0.5) and out.threshold == 0.2
    post.configure(PostprocessConfig(temporal_frames=5, threshold=0.2))
    out = post.process(frame, Result(np.zeros((2, 2), np.float32), sem, {}), 0.2)
    assert out.anomaly_score[0, 0] == pytest.approx(0.0)


def test_colour_images() -> None:
    out = _run(PostprocessConfig())
    frame, semantic, _ = _scene()
    assert out.semantic_color.shape == (H, W, 3) and out.semantic_color.dtype == np.uint8
    np.testing.assert_array_equal(out.semantic_color[50, 5], CITYSCAPES_PALETTE[ROAD])
    np.testing.assert_array_equal(out.semantic_color[0, 0], CITYSCAPES_PALETTE[SKY])
    np.testing.assert_array_equal(colorize(np.array([[255, 19]], np.uint8)), np.zeros((1, 2, 3), np.uint8))
    # overlay: red where anomalous (inside the box outline), the frame elsewhere
    assert out.overlay.shape == (H, W, 3)
    r, g, b = (int(v) for v in out.overlay[40, 50])
    assert r > 150 and g < 60 and b < 60
    np.testing.assert_array_equal(out.overlay[55, 5], frame[55, 5])
    np.testing.assert_array_equal(frame, _scene()[0])  # the input frame is not modified


def test_colorize_is_the_palette_for_every_id() -> None:
    ids = np.arange(256, dtype=np.uint8)
    semantic = np.tile(ids, (3, 2))  # every id, twice per row; odd width
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(CITYSCAPES_PALETTE)] = CITYSCAPES_PALETTE
    np.testing.assert_array_equal(colorize(semantic), palette[semantic])
    np.testing.assert_array_equal(colorize(semantic[:, ::3]), palette[semantic[:, ::3]])  # a strided view


def test_colour_images_can_be_skipped() -> None:
    frame, semantic, score = _scene()
    out = Postprocessor().process(frame, Result(score, semantic, {}), 0.0, semantic_color=False, overlay=False)
    assert out.semantic_color is None and out.overlay is None
    assert int((out.anomaly_mask == 255).sum()) == 230


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"threshold": float("nan")}, "threshold must be finite"),
        ({"threshold": "0.5"}, "threshold must be a number"),
        ({"min_instance_area": 0}, "min_instance_area must be an int >= 1"),
        ({"gating_dilation_px": -1}, "gating_dilation_px must be an int >= 0"),
        ({"temporal_frames": 2.0}, "temporal_frames must be an int >= 0"),
        ({"temporal_max_gap_s": 0}, "temporal_max_gap_s must be a finite number > 0"),
        ({"road_gating": 1}, "road_gating must be a bool"),
    ],
)
def test_config_validation(kwargs: dict, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        PostprocessConfig(**kwargs)


def test_result_must_match_the_frame() -> None:
    frame, semantic, score = _scene()
    post = Postprocessor()
    with pytest.raises(ValueError, match=r"anomaly_score must be \(60, 100\) float32"):
        post.process(frame, Result(score[:10], semantic, {}), 0.0)
    with pytest.raises(ValueError, match="semantic must be"):
        post.process(frame, Result(score, semantic.astype(np.int64), {}), 0.0)
    with pytest.raises(ValueError, match="frame_rgb must be an"):
        post.process(frame[..., 0], Result(score, semantic, {}), 0.0)


def test_regions_at_the_image_border() -> None:
    frame, semantic, score = _scene()
    score[50:, 85:] = 0.95  # the bottom-right corner, touching two borders
    out = _run(PostprocessConfig(min_instance_area=20), score=score)
    corner = next(i for i in out.instances if i.bbox == (85, 50, 15, 10))
    assert corner.area == 150 and corner.semantic_class == ROAD
    assert corner.centroid == pytest.approx((92.0, 54.5))
    r, g, b = (int(v) for v in out.overlay[H - 1, W - 1])
    assert r > 150 and g < 60 and b < 60


def test_instances_can_be_skipped_while_gating_still_applies() -> None:
    frame, semantic, score = _scene()
    post = Postprocessor(PostprocessConfig(road_gating=True, gating_dilation_px=3))
    out = post.process(frame, Result(score, semantic, {}), 0.0, instances=False)
    assert out.instances == []
    assert int((out.anomaly_mask == 255).sum()) == 200  # the sky region is gated out all the same


def test_nothing_anomalous() -> None:
    frame, semantic, score = _scene()
    out = _run(PostprocessConfig(threshold=0.95, road_gating=True))
    assert out.instances == [] and not out.anomaly_mask.any()
    np.testing.assert_array_equal(out.overlay, frame)
