"""Evaluation data-set loaders (`m2a_training.data.benchmarks`) on tiny generated fixtures of each real layout,
including broken ones, and the untrusted-file readers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m2a_training.data import benchmarks
from m2a_training.data.benchmarks import (
    SynthRoadBenchmark,
    open_benchmark,
    read_label_png,
    read_rgb,
    read_score_map,
)

H, W = 6, 8


def _rgb(path: Path, seed: int = 0) -> np.ndarray:
    image = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"lossless": True} if path.suffix == ".webp" else {"quality": 100} if path.suffix == ".jpg" else {}
    Image.fromarray(image).save(path, **options)
    return image


def _label(path: Path, values: list[int], shape: tuple[int, int] = (H, W)) -> np.ndarray:
    label = np.resize(np.asarray(values, np.uint8), shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label).save(path)
    return label


# ----------------------------------------------------------------------------------------------------------
# SMIYC


def _smiyc(root: Path, ext: str) -> None:
    _rgb(root / "images" / f"validation0001.{ext}", 1)
    _rgb(root / "images" / f"validation0002.{ext}", 2)
    _rgb(root / "images" / f"test0001.{ext}", 3)  # a test frame: no label, left out
    _label(root / "labels_masks" / "validation0001_labels_semantic.png", [0, 1, 255])
    _label(root / "labels_masks" / "validation0002_labels_semantic.png", [0, 0, 1])
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(
        root / "labels_masks" / "validation0001_labels_semantic_color.png"
    )


@pytest.mark.parametrize(("name", "ext", "track"), [("ra21", "jpg", "anomaly"), ("ro21", "webp", "obstacle")])
def test_smiyc_layout(tmp_path, name, ext, track):
    _smiyc(tmp_path, ext)
    data = open_benchmark(name, tmp_path)
    assert (data.names, data.track, data.kind) == (["validation0001", "validation0002"], track, "anomaly")
    frame = data[0]
    assert frame.image.shape == (H, W, 3) and frame.image.dtype == np.uint8 and frame.semantic is None
    np.testing.assert_array_equal(frame.anomaly, np.resize(np.array([0, 1, 255], np.uint8), (H, W)))


def test_smiyc_broken_layouts(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ra21: folder .*images does not exist"):
        open_benchmark("ra21", tmp_path)
    _smiyc(tmp_path, "jpg")
    (tmp_path / "images" / "validation0002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"validation0002_labels_semantic.png has no image .*validation0002"):
        open_benchmark("ra21", tmp_path)
    _rgb(tmp_path / "images" / "validation0002.jpg")
    _label(tmp_path / "labels_masks" / "validation0002_labels_semantic.png", [0, 7])
    data = open_benchmark("ra21", tmp_path)
    with pytest.raises(ValueError, match=r"validation0002_labels_semantic.png holds values \[7\]"):
        data[1]
    (tmp_path / "labels_masks" / "validation0002_labels_semantic.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="validation0002_labels_semantic.png is not a readable image"):
        data[1]
    _label(tmp_path / "labels_masks" / "validation0002_labels_semantic.png", [0, 1], shape=(H + 1, W))
    with pytest.raises(ValueError, match=r"is 8x7 but its image .*validation0002.jpg is 8x6"):
        data[1]
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(
        tmp_path / "labels_masks" / "validation0002_labels_semantic.png"
    )
    with pytest.raises(ValueError, match="must be a single-channel image, got PIL mode 'RGB'"):
        data[1]


# ----------------------------------------------------------------------------------------------------------
# Fishyscapes, Road Anomaly, the authors' bundle


@pytest.mark.parametrize(("name", "split"), [("fs_laf", "LostAndFound"), ("fs_static", "Static")])
def test_fishyscapes_layout(tmp_path, name, split):
    base = tmp_path / split
    _rgb(base / "original" / "04_Maurener_Weg_8_000002_000140_leftImg8bit.png")
    _label(base / "labels" / "04_Maurener_Weg_8_000002_000140_labels.png", [0, 1, 255, 0])
    _rgb(base / "original" / "1.png")  # Static-style names: the same stem
    _label(base / "labels" / "1.png", [1, 0])
    for root in (tmp_path, base):  # the folder above the split, or the split itself
        data = open_benchmark(name, root)
        assert data.names == ["04_Maurener_Weg_8_000002_000140", "1"]
        assert data[1].anomaly[0, :2].tolist() == [1, 0]
    (base / "labels" / "1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"image .*original/1.png has no label .*labels/1.png"):
        open_benchmark(name, tmp_path)


def test_road_anomaly_layout_maps_raw_2_to_anomaly_and_road_to_normal(tmp_path):
    frames = tmp_path / "frames"
    _rgb(frames / "animals01_sheep.jpg")
    _label(frames / "animals01_sheep.labels" / "labels_semantic.png", [0, 1, 2])
    _rgb(frames / "cones02.webp")
    _label(frames / "cones02.labels" / "labels_semantic.png", [2, 0])
    data = open_benchmark("road_anomaly", tmp_path)
    assert data.names == ["animals01_sheep", "cones02"]
    assert data[0].anomaly[0, :3].tolist() == [0, 0, 1]
    (tmp_path / "frame_list.json").write_text(json.dumps(["cones02.webp"]))  # the listing, when present, wins
    assert open_benchmark("road_anomaly", tmp_path).names == ["cones02"]
    (tmp_path / "frame_list.json").write_text(json.dumps(["missing.jpg"]))
    with pytest.raises(FileNotFoundError, match=r"missing.jpg .*does not exist"):
        open_benchmark("road_anomaly", tmp_path)
    (tmp_path / "frame_list.json").unlink()
    (frames / "cones02.labels" / "labels_semantic.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"cones02.webp has no label .*cones02.labels/labels_semantic.png"):
        open_benchmark("road_anomaly", tmp_path)


def test_packaged_layout(tmp_path):
    ra = tmp_path / "RoadAnomaly"
    _rgb(ra / "images" / "a.jpg")
    _label(ra / "labels_masks" / "a.png", [0, 2])  # the authors' rule: 2 -> 1 under RoadAnomaly*
    data = open_benchmark("packaged", ra)
    assert data[0].anomaly[0, :2].tolist() == [0, 1] and data.track == "anomaly"
    ro = tmp_path / "RoadObsticle21"
    _rgb(ro / "images" / "b.webp")
    _label(ro / "labels_masks" / "b.png", [0, 2])
    data = open_benchmark("packaged", ro)
    assert data.track == "obstacle"
    with pytest.raises(ValueError, match=r"b.png holds values \[2\]"):
        data[0]
    (ro / "labels_masks" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"image .*b.webp has no label .*labels_masks/b.png"):
        open_benchmark("packaged", ro)


# ----------------------------------------------------------------------------------------------------------
# Cityscapes


def test_cityscapes_train_ids_or_converted_label_ids(tmp_path):
    _rgb(tmp_path / "leftImg8bit" / "val" / "lindau" / "lindau_000000_000019_leftImg8bit.png")
    _label(tmp_path / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelTrainIds.png", [0, 18, 255])
    _rgb(tmp_path / "leftImg8bit" / "val" / "munster" / "munster_000001_000019_leftImg8bit.png")
    _label(tmp_path / "gtFine" / "val" / "munster" / "munster_000001_000019_gtFine_labelIds.png", [7, 26, 0, 33, 4])
    data = open_benchmark("cityscapes", tmp_path)
    assert data.kind == "semantic" and data.names == ["lindau_000000_000019", "munster_000001_000019"]
    assert data[0].semantic[0, :3].tolist() == [0, 18, 255] and data[0].anomaly is None
    assert data[1].semantic[0, :5].tolist() == [0, 13, 255, 18, 255]  # road, car, unlabeled, bicycle, static
    _label(tmp_path / "gtFine" / "val" / "munster" / "munster_000001_000019_gtFine_labelIds.png", [7, 40])
    with pytest.raises(ValueError, match=r"labelIds.png holds values \[40\]"):
        data[1]
    _label(tmp_path / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelTrainIds.png", [19])
    with pytest.raises(ValueError, match=r"labelTrainIds.png holds values \[19\]"):
        data[0]
    _rgb(tmp_path / "leftImg8bit" / "val" / "ulm" / "ulm_000002_000019_leftImg8bit.png")
    with pytest.raises(FileNotFoundError, match=r"ulm_000002_000019_leftImg8bit.png has no label .*labelTrainIds"):
        open_benchmark("cityscapes", tmp_path)


def test_unknown_data_set_and_missing_root(tmp_path):
    with pytest.raises(ValueError, match="unknown data set 'kitti'"):
        open_benchmark("kitti", tmp_path)
    with pytest.raises(FileNotFoundError, match="root folder .*nowhere does not exist"):
        open_benchmark("ra21", tmp_path / "nowhere")


def test_synthroad_frames_follow_the_label_conventions():
    data = SynthRoadBenchmark(num_frames=2, height=64, width=128, seed=7)
    frame = data[1]
    assert data.names == ["synthroad_0000007", "synthroad_0000008"] and frame.name == data.names[1]
    assert frame.image.shape == (64, 128, 3) and frame.anomaly.shape == frame.semantic.shape == (64, 128)
    assert set(np.unique(frame.anomaly)) <= {0, 1, 255} and frame.semantic.max() <= 255
    with pytest.raises(IndexError):
        data[2]


# ----------------------------------------------------------------------------------------------------------
# Files


def test_read_score_map_formats(tmp_path):
    score = np.random.default_rng(0).random((H, W)).astype(np.float32)
    np.save(tmp_path / "a.npy", score)
    np.testing.assert_array_equal(read_score_map(tmp_path / "a.npy"), score)
    as16 = (score * 65535).astype(np.uint16)
    Image.fromarray(as16).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_score_map(tmp_path / "b.png"), as16)
    Image.fromarray(score).save(tmp_path / "c.tif")
    np.testing.assert_array_equal(read_score_map(tmp_path / "c.tif"), score)


def test_read_score_map_refuses_pickles_wrong_shapes_and_huge_headers(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([[{"a": 1}]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="objects.npy must hold an .H, W. numeric array"):
        read_score_map(tmp_path / "objects.npy")
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"cube.npy must hold an \(H, W\) numeric array, got shape \(2, 2, 2\)"):
        read_score_map(tmp_path / "cube.npy")
    with (tmp_path / "huge.npy").open("wb") as f:  # a header that claims 100000 x 100000 floats, no data
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (100000, 100000)})
    with pytest.raises(ValueError, match="huge.npy is 100000x100000: more than"):
        read_score_map(tmp_path / "huge.npy")
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY junk")
    with pytest.raises(ValueError, match="junk.npy is not a valid .npy file"):
        read_score_map(tmp_path / "junk.npy")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="rgb.png must be a single-channel"):
        read_score_map(tmp_path / "rgb.png")
    with pytest.raises(FileNotFoundError, match="score map .*absent.npy does not exist"):
        read_score_map(tmp_path / "absent.npy")


def test_images_larger_than_the_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    _rgb(tmp_path / "x.png")
    monkeypatch.setattr(benchmarks, "MAX_PIXELS", H * W - 1)
    with pytest.raises(ValueError, match=r"x.png is 8x6: expected 1 .. 47 pixels"):
        read_rgb(tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"x.png is 8x6"):
        read_label_png(tmp_path / "x.png")


def test_16_bit_label_maps_are_read_when_their_values_fit(tmp_path):
    Image.fromarray(np.array([[0, 1, 255]], np.uint16)).save(tmp_path / "ok.png")
    assert read_label_png(tmp_path / "ok.png").tolist() == [[0, 1, 255]]
    Image.fromarray(np.array([[0, 256]], np.uint16)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match=r"big.png holds values outside 0..255 \(max 256\)"):
        read_label_png(tmp_path / "big.png")
