"""Training data: augmentation, Anomaly Mix, the sample stream, generated scenes, Cityscapes and COCO preparation."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from m2a_perception.synthroad import SceneConfig
from m2a_training.data.anomaly_mix import AnomalyMix, bounding_box, paste_outlier
from m2a_training.data.augment import AugmentConfig, augment, color_aug_ssd, crop_origin, shortest_edge_size
from m2a_training.data.cityscapes import CityscapesSemantic, label_ids_to_train_ids
from m2a_training.data.coco_outliers import EXCLUDED_CLASSES, CocoOutliers, prepare_coco
from m2a_training.data.stream import StreamBatchSampler, TrainingSamples, collate
from m2a_training.data.synthroad_dataset import SynthRoadOutliers, SynthRoadScenes

PALETTE = np.random.default_rng(0).integers(0, 256, size=(256, 3), dtype=np.uint8)
PATCH_COLOUR = (1, 2, 3)
PALETTE[254] = PATCH_COLOUR  # the pasted object's colour, unique in the palette
for _c in range(256):
    if _c != 254 and tuple(PALETTE[_c]) == PATCH_COLOUR:
        PALETTE[_c] = (200, 200, 200)


def _blocks(height: int = 48, width: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A label map of 8x8 blocks of random classes and the image painting each class in its palette colour."""
    rng = np.random.default_rng(1)
    label = np.kron(rng.integers(0, 19, size=(height // 8, width // 8)), np.ones((8, 8), dtype=np.int64))
    label = label.astype(np.uint8)
    return PALETTE[label], label


class _SolidPatches:
    """Outlier source: a disc of PATCH_COLOUR in a square patch."""

    def __len__(self) -> int:
        return 1

    def sample(self, rng):  # noqa: ANN001, ANN201
        size = int(rng.integers(6, 14))
        yy, xx = np.mgrid[:size, :size]
        mask = (yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 <= (size / 2) ** 2
        patch = np.zeros((size, size, 3), np.uint8)
        patch[mask] = PATCH_COLOUR
        return patch, mask


# ---------------------------------------------------------------------------------------------------------
# Augmentation


def test_shortest_edge_size_follows_detectron2():
    assert shortest_edge_size(1024, 2048, 512, 4096) == (512, 1024)
    assert shortest_edge_size(1024, 2048, 2048, 4096) == (2048, 4096)
    assert shortest_edge_size(100, 1000, 600, 4096) == (410, 4096)  # long side capped, then rounded
    assert shortest_edge_size(300, 200, 100, 4096) == (150, 100)


def test_augment_resizes_crops_and_keeps_image_and_label_aligned():
    image, label = _blocks()
    config = AugmentConfig(min_sizes=(48,), max_size=1000, crop_size=(32, 40), color_jitter=False, flip_prob=0.5)
    flips = 0
    for seed in range(12):
        out_image, out_label = augment(image, label, np.random.default_rng(seed), config)
        assert out_image.shape == (32, 40, 3) and out_label.shape == (32, 40)
        np.testing.assert_array_equal(out_image, PALETTE[out_label])  # every pixel still shows its class colour
        flips += not any(np.array_equal(out_label, label[y : y + 32, x : x + 40]) for y in range(17) for x in range(57))
    assert 0 < flips < 12  # some were flipped, some not


def test_augment_resize_choices_change_the_scale_and_labels_stay_nearest():
    image, label = _blocks()
    config = AugmentConfig(min_sizes=(96,), max_size=1000, crop_size=(1000, 1000), color_jitter=False, flip_prob=0)
    out_image, out_label = augment(image, label, np.random.default_rng(0), config)
    assert out_image.shape == (96, 192, 3) and out_label.shape == (96, 192)
    np.testing.assert_array_equal(out_label, np.kron(label, np.ones((2, 2), np.uint8)))


def test_crop_is_clipped_to_small_images_and_category_constraint_retries():
    label = np.zeros((20, 30), np.uint8)
    assert crop_origin(label, (50, 50), np.random.default_rng(0))[2:] == (20, 30)
    label[:, 15:] = 1  # two classes side by side: a 10-wide crop mostly sees one class
    rng = np.random.default_rng(0)
    y0, x0, h, w = crop_origin(label, (10, 10), rng, single_category_max_area=0.75)
    window = label[y0 : y0 + h, x0 : x0 + w]
    counts = np.bincount(window.ravel(), minlength=2)
    assert counts.max() < 0.75 * counts.sum()


def test_color_aug_ssd_is_seeded_and_changes_only_colours():
    image, _ = _blocks()
    a = color_aug_ssd(image, np.random.default_rng(5))
    b = color_aug_ssd(image, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    changed = [not np.array_equal(color_aug_ssd(image, np.random.default_rng(s)), image) for s in range(8)]
    assert any(changed)
    assert a.shape == image.shape and a.dtype == np.uint8


# ---------------------------------------------------------------------------------------------------------
# Anomaly Mix


def test_paste_outlier_labels_254_exactly_where_it_pasted_and_keeps_the_inputs():
    image, label = _blocks()
    before_image, before_label = image.copy(), label.copy()
    patch, mask = _SolidPatches().sample(np.random.default_rng(0))
    out_image, out_label, pasted = paste_outlier(image, label, patch, mask, np.random.default_rng(1))
    np.testing.assert_array_equal(image, before_image)
    np.testing.assert_array_equal(label, before_label)
    assert pasted.sum() == mask.sum()
    np.testing.assert_array_equal(out_label == 254, pasted)
    np.testing.assert_array_equal(out_image[pasted], np.broadcast_to(PATCH_COLOUR, (int(pasted.sum()), 3)))
    np.testing.assert_array_equal(out_image[~pasted], image[~pasted])
    np.testing.assert_array_equal(out_label[~pasted], label[~pasted])
    box = bounding_box(pasted)
    assert (box[0].stop - box[0].start, box[1].stop - box[1].start) == mask.shape


def test_paste_outlier_shrinks_a_patch_larger_than_the_image():
    image, label = np.zeros((10, 20, 3), np.uint8), np.zeros((10, 20), np.uint8)
    patch, mask = np.full((30, 30, 3), 9, np.uint8), np.ones((30, 30), bool)
    _, out_label, pasted = paste_outlier(image, label, patch, mask, np.random.default_rng(0))
    assert pasted.sum() == 100 and (out_label == 254).sum() == 100


def test_anomaly_mix_probability():
    image, label = _blocks()
    never = AnomalyMix(_SolidPatches(), probability=0.0)
    always = AnomalyMix(_SolidPatches(), probability=1.0)
    assert not never(image, label, np.random.default_rng(0))[2].any()
    assert always(image, label, np.random.default_rng(0))[2].any()
    mix = AnomalyMix(_SolidPatches(), probability=0.2)
    rate = np.mean([mix(image, label, np.random.default_rng(s))[2].any() for s in range(400)])
    assert 0.13 < rate < 0.27


def test_mixed_and_augmented_samples_show_the_object_exactly_where_labelled_254():
    image, label = _blocks()
    config = AugmentConfig(min_sizes=(48,), max_size=1000, crop_size=(40, 80), color_jitter=False)
    samples = TrainingSamples([(image, label)], config, AnomalyMix(_SolidPatches(), probability=1.0), seed=3)
    seen = 0
    for position in range(10):
        img, lab = samples[position]
        img, lab = img.permute(1, 2, 0).numpy(), lab.numpy()
        out = lab == 254
        seen += int(out.any())
        np.testing.assert_array_equal(img, PALETTE[lab])  # 254 -> PATCH_COLOUR, every class its colour
    assert seen > 5


def test_synthroad_outliers_are_cropped_to_their_object():
    source = SynthRoadOutliers("train", canvas_size=(64, 128))
    for seed in range(3):
        patch, mask = source.sample(np.random.default_rng(seed))
        assert patch.shape[:2] == mask.shape and patch.dtype == np.uint8 and mask.dtype == bool
        assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()
        assert (patch[~mask] == 0).all()


# ---------------------------------------------------------------------------------------------------------
# Sample stream


def test_stream_is_a_function_of_position_and_epochs_are_permutations():
    scenes = SynthRoadScenes(5, SceneConfig(height=64, width=128, num_anomalies=0))
    config = AugmentConfig(min_sizes=(64, 96), max_size=512, crop_size=(48, 96))
    samples = TrainingSamples(scenes, config, None, seed=0)
    again = TrainingSamples(scenes, config, None, seed=0)
    for position in (0, 7):
        a, b = samples[position], again[position]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(samples[0][0], samples[1][0])
    for epoch in range(3):
        assert sorted(samples.dataset_index(epoch * 5 + i) for i in range(5)) == list(range(5))
    assert [samples.dataset_index(i) for i in range(5)] != [samples.dataset_index(5 + i) for i in range(5)]


def test_batch_sampler_splits_the_global_batch_across_ranks():
    ranks = [list(StreamBatchSampler(6, rank=r, world_size=3, start=2, stop=4)) for r in range(3)]
    assert ranks[0] == [[12, 13], [18, 19]] and ranks[2] == [[16, 17], [22, 23]]
    with pytest.raises(ValueError, match="divisible"):
        StreamBatchSampler(5, rank=0, world_size=2, start=0, stop=1)


def test_collate_pads_images_with_the_mean_and_labels_with_ignore():
    a = (torch.full((3, 4, 5), 10, dtype=torch.uint8), torch.zeros(4, 5, dtype=torch.uint8))
    b = (torch.full((3, 6, 3), 20, dtype=torch.uint8), torch.ones(6, 3, dtype=torch.uint8))
    images, labels = collate([a, b], pad_value=(1.0, 2.0, 3.0))
    assert images.shape == (2, 3, 6, 5) and labels.shape == (2, 6, 5) and labels.dtype == torch.int64
    assert images[0, :, :4, :5].eq(10).all() and images[0, 2, 5, 0] == 3.0 and labels[0, 5, 0] == 255
    assert images[1, 1, 0, 4] == 2.0 and labels[1, 0, 4] == 255 and labels[1, :, :3].eq(1).all()


def test_synthroad_scenes_are_cached_read_only_and_seeded():
    scenes = SynthRoadScenes(2, SceneConfig(height=64, width=128, num_anomalies=1), first_seed=10)
    image, semantic = scenes[1]
    assert scenes[1][0] is image and not image.flags.writeable
    other = SynthRoadScenes(2, SceneConfig(height=64, width=128, num_anomalies=1), first_seed=11)
    np.testing.assert_array_equal(other[0][1], semantic)
    assert (scenes.frame(1).anomaly == 1).any()


# ---------------------------------------------------------------------------------------------------------
# Cityscapes


def _write_cityscapes(root: Path, split: str, train_ids: bool) -> None:
    for city, name in (("aachen", "aachen_000000_000019"), ("bonn", "bonn_000001_000019")):
        (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
        image = np.zeros((8, 16, 3), np.uint8)
        image[..., 2] = 200  # red in RGB (cv2 writes BGR)
        cv2.imwrite(str(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png"), image)
        ids = np.full((8, 16), 7, np.uint8)  # road
        ids[:, 8:] = 26  # car
        ids[0, 0] = 4  # static: ignored
        suffix = "labelTrainIds" if train_ids else "labelIds"
        stored = label_ids_to_train_ids(ids) if train_ids else ids
        cv2.imwrite(str(root / "gtFine" / split / city / f"{name}_gtFine_{suffix}.png"), stored)


@pytest.mark.parametrize("train_ids", [True, False])
def test_cityscapes_reads_train_ids_or_converts_label_ids(tmp_path, train_ids):
    _write_cityscapes(tmp_path, "val", train_ids)
    data = CityscapesSemantic(tmp_path, "val")
    assert len(data) == 2
    image, label = data[1]
    assert image.shape == (8, 16, 3) and (image[..., 0] == 200).all()  # RGB
    assert label[1, 0] == 0 and label[1, 8] == 13 and label[0, 0] == 255


def test_cityscapes_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="leftImg8bit"):
        CityscapesSemantic(tmp_path, "train")
    _write_cityscapes(tmp_path, "train", True)
    next((tmp_path / "gtFine" / "train" / "bonn").glob("*.png")).unlink()
    with pytest.raises(FileNotFoundError, match="bonn_000001_000019_gtFine_labelTrainIds"):
        CityscapesSemantic(tmp_path, "train")


# ---------------------------------------------------------------------------------------------------------
# COCO preparation


def _polygon(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _write_coco(root: Path) -> None:
    from pycocotools import mask as mask_utils

    categories = [{"id": i + 1, "name": n, "supercategory": "x"} for i, n in enumerate(EXCLUDED_CLASSES)]
    categories += [
        {"id": 50, "name": "dog", "supercategory": "animal"},
        {"id": 51, "name": "kite", "supercategory": "x"},
    ]
    images = [
        {"id": 1, "file_name": "000001.jpg", "height": 480, "width": 500},  # dog + crowd kite: kept
        {"id": 2, "file_name": "000002.jpg", "height": 479, "width": 600},  # too small
        {"id": 3, "file_name": "000003.jpg", "height": 500, "width": 500},  # a dog and a car: excluded
        {"id": 4, "file_name": "000004.jpg", "height": 500, "width": 520},  # no annotation
        {"id": 5, "file_name": "000005.jpg", "height": 480, "width": 480},  # stop sign: excluded
    ]
    crowd = np.zeros((480, 500), np.uint8, order="F")
    crowd[300:320, 400:450] = 1
    rle = mask_utils.encode(crowd)
    rle["counts"] = rle["counts"].decode()
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 50, "segmentation": _polygon(10, 20, 110, 220), "area": 1,
         "bbox": [10, 20, 100, 200], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 51, "segmentation": rle, "area": 1, "bbox": [400, 300, 50, 20],
         "iscrowd": 1},
        {"id": 3, "image_id": 2, "category_id": 50, "segmentation": _polygon(0, 0, 5, 5), "area": 1,
         "bbox": [0, 0, 5, 5], "iscrowd": 0},
        {"id": 4, "image_id": 3, "category_id": 50, "segmentation": _polygon(0, 0, 5, 5), "area": 1,
         "bbox": [0, 0, 5, 5], "iscrowd": 0},
        {"id": 5, "image_id": 3, "category_id": 3, "segmentation": _polygon(9, 9, 20, 20), "area": 1,
         "bbox": [9, 9, 11, 11], "iscrowd": 0},
        {"id": 6, "image_id": 5, "category_id": 8, "segmentation": _polygon(9, 9, 20, 20), "area": 1,
         "bbox": [9, 9, 11, 11], "iscrowd": 0},
    ]  # fmt: skip
    (root / "annotations").mkdir(parents=True)
    (root / "train2017").mkdir()
    payload = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(payload))
    for info in images:
        image = np.full((info["height"], info["width"], 3), 40 + info["id"], np.uint8)
        cv2.imwrite(str(root / "train2017" / info["file_name"]), image)


def test_prepare_coco_keeps_large_images_without_cityscapes_classes(tmp_path):
    _write_coco(tmp_path / "coco")
    stats = prepare_coco(tmp_path / "coco", tmp_path / "out")
    assert (stats.kept, stats.too_small, stats.overlapping, stats.unannotated) == (1, 1, 2, 1)
    masks = sorted(p.name for p in (tmp_path / "out" / "ood_annotations").iterdir())
    assert masks == ["000001.png"]
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == ["000001.jpg"]
    mask = cv2.imread(str(tmp_path / "out" / "ood_annotations" / "000001.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (480, 500) and set(np.unique(mask)) == {0, 254}
    assert mask[100, 50] == 254 and mask[310, 420] == 254 and mask[400, 300] == 0 and mask[5, 5] == 0
    expected = np.zeros((480, 500), bool)
    expected[300:320, 400:450] = True
    assert (mask[expected] == 254).all()

    patch, obj = CocoOutliers(tmp_path / "out").sample(np.random.default_rng(0))
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    assert obj.shape == (rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
    np.testing.assert_array_equal(obj, mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] == 254)
    assert patch.shape == (*obj.shape, 3)


def test_prepare_coco_reports_missing_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="instances_train2017.json"):
        prepare_coco(tmp_path, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="prepare-coco"):
        CocoOutliers(tmp_path / "nothing")
