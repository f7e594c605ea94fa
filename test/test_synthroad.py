"""Tests of the procedural road scenes: determinism, label contracts, sequences and anomaly pasting."""

import numpy as np
import pytest

from m2a_perception import synthroad
from m2a_perception.synthroad import (
    ANOMALY_FAMILIES,
    ANOMALY_SHAPES,
    ANOMALY_TEXTURES,
    CLASS_NAMES,
    IGNORE_ID,
    PASTED_LABEL,
    TRAIN_IDS,
    SceneConfig,
    colorize_semantic,
    generate_scene,
    generate_sequence,
    paste_anomaly,
)

SMALL = SceneConfig(height=128, width=256)


def _assert_same(a: synthroad.Scene, b: synthroad.Scene) -> None:
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.semantic, b.semantic)
    np.testing.assert_array_equal(a.anomaly, b.anomaly)


def test_same_seed_gives_identical_scene_and_other_seeds_differ():
    _assert_same(generate_scene(3, SMALL), generate_scene(3, SMALL))
    assert not np.array_equal(generate_scene(3, SMALL).image, generate_scene(4, SMALL).image)
    assert not np.array_equal(generate_scene(3, SMALL).semantic, generate_scene(4, SMALL).semantic)


@pytest.mark.parametrize(("height", "width"), [(32, 32), (64, 128), (97, 203), (256, 512)])
def test_shapes_dtypes_and_label_values(height, width):
    scene = generate_scene(1, SceneConfig(height=height, width=width, num_anomalies=2))
    assert scene.image.shape == (height, width, 3) and scene.image.dtype == np.uint8
    assert scene.semantic.shape == (height, width) and scene.semantic.dtype == np.uint8
    assert scene.anomaly.shape == (height, width) and scene.anomaly.dtype == np.uint8
    assert set(np.unique(scene.semantic)) <= set(range(len(CLASS_NAMES))) | {IGNORE_ID}
    assert set(np.unique(scene.anomaly)) <= {0, 1, IGNORE_ID}


@pytest.mark.parametrize("seed", range(5))
def test_anomaly_pixels_are_exactly_the_unlabelled_ones(seed):
    scene = generate_scene(seed, SceneConfig(height=128, width=256, num_anomalies=3))
    assert (scene.anomaly == 1).any()
    np.testing.assert_array_equal(scene.semantic == IGNORE_ID, scene.anomaly == 1)


def test_void_border_is_a_ring_of_255_around_anomalies_that_keeps_its_class():
    config = SceneConfig(height=256, width=512, num_anomalies=2, void_border=3)
    scene = generate_scene(5, config)
    plain = generate_scene(5, SceneConfig(height=256, width=512, num_anomalies=2))
    void = scene.anomaly == IGNORE_ID
    assert void.any()
    np.testing.assert_array_equal(scene.anomaly == 1, plain.anomaly == 1)
    assert (plain.anomaly[void] == 0).all()  # the ring lies on normal pixels
    assert (scene.semantic[void] != IGNORE_ID).all()


def test_typical_scenes_contain_the_main_classes():
    seen = set()
    for seed in range(4):
        present = set(np.unique(generate_scene(seed, SceneConfig(height=256, width=512)).semantic))
        for name in ("road", "sidewalk", "building", "vegetation", "sky"):
            assert TRAIN_IDS[name] in present, f"seed {seed} has no {name}"
        seen |= present
    for name in ("car", "person", "pole"):
        assert TRAIN_IDS[name] in seen, f"no {name} in seeds 0-3"


def test_no_anomalies_when_none_are_asked_for():
    for seed in range(3):
        scene = generate_scene(seed, SceneConfig(height=128, width=256, num_anomalies=0))
        assert not (scene.anomaly != 0).any()
        assert not (scene.semantic == IGNORE_ID).any()


def test_layout_is_the_same_at_every_resolution():
    small = generate_scene(2, SceneConfig(height=128, width=256)).semantic
    large = generate_scene(2, SceneConfig(height=512, width=1024)).semantic
    agreement = (large[1::4, 1::4] == small).mean()  # pixel centres of the small grid
    assert agreement > 0.95


@pytest.mark.parametrize("seed", range(3))
def test_anomaly_settings_do_not_change_the_street(seed):
    moving = [TRAIN_IDS[name] for name in ("person", "rider", "car", "truck", "bus", "bicycle")] + [IGNORE_ID]
    train = generate_scene(seed, SceneConfig(height=128, width=256, anomaly_family="train", num_anomalies=2))
    plain = generate_scene(seed, SceneConfig(height=128, width=256, num_anomalies=0))
    street = ~np.isin(train.semantic, moving) & ~np.isin(plain.semantic, moving)  # traffic may move around anomalies
    # Vehicle shadows (labelled road) move with the vehicles and may tip a pixel at the curb: allow 0.1 %.
    assert (train.semantic[street] != plain.semantic[street]).mean() < 0.001


def test_sequence_obstacle_grows_as_the_camera_approaches():
    for seed in range(3):
        sequence = generate_sequence(seed, 8, SceneConfig(height=128, width=256))
        areas = [int((frame.anomaly == 1).sum()) for frame in sequence]
        assert areas[-1] > 8 * max(areas[0], 1), areas
        assert all(later >= 0.75 * earlier for earlier, later in zip(areas, areas[1:])), areas
        distances = [sequence.obstacle_distance(k) for k in range(len(sequence))]
        assert distances[0] == pytest.approx(60.0) and distances[-1] == pytest.approx(8.0)


def test_sequence_is_lazy_indexable_and_deterministic():
    sequence = generate_sequence(4, 10_000, SceneConfig(height=64, width=128))
    assert len(sequence) == 10_000
    _assert_same(sequence[9_999], sequence[-1])
    _assert_same(sequence[5_000], generate_sequence(4, 10_000, SceneConfig(height=64, width=128))[5_000])
    first_two = list(zip(range(2), sequence))
    _assert_same(first_two[1][1], sequence[1])
    with pytest.raises(IndexError):
        sequence[10_000]


def test_sequence_frames_change_but_keep_the_sky():
    sequence = generate_sequence(1, 3, SceneConfig(height=128, width=256, num_anomalies=0))
    first, last = sequence[0], sequence[2]
    assert not np.array_equal(first.image, last.image)  # the camera moved: markings and scenery move
    sky = TRAIN_IDS["sky"]
    assert ((first.semantic == sky) == (last.semantic == sky))[:10].mean() > 0.8  # top rows: mostly unchanged


def test_anomaly_families_are_disjoint():
    assert set(ANOMALY_FAMILIES) == set(ANOMALY_SHAPES) == set(ANOMALY_TEXTURES) == {"train", "eval"}
    assert not set(ANOMALY_SHAPES["train"]) & set(ANOMALY_SHAPES["eval"])
    assert not set(ANOMALY_TEXTURES["train"]) & set(ANOMALY_TEXTURES["eval"])


@pytest.mark.parametrize("family", ANOMALY_FAMILIES)
def test_every_kind_of_a_family_is_drawn_and_no_other(family):
    rng = np.random.default_rng(0)
    appearances = [synthroad._random_appearance(rng, family) for _ in range(200)]
    assert {a.shape for a in appearances} == set(ANOMALY_SHAPES[family])
    assert {a.texture.kind for a in appearances} == set(ANOMALY_TEXTURES[family])


@pytest.mark.parametrize("family", ANOMALY_FAMILIES)
def test_paste_anomaly_labels_exactly_the_pixels_it_changes(family):
    scene = generate_scene(0, SceneConfig(height=128, width=256, num_anomalies=0))
    image, semantic = scene.image.copy(), scene.semantic.copy()
    mask = paste_anomaly(image, semantic, np.random.default_rng(1), family, center=(0.6, 0.5), scale=0.3)
    assert mask.dtype == bool and mask.shape == semantic.shape
    assert 0.01 * mask.size < mask.sum() < 0.2 * mask.size
    np.testing.assert_array_equal(semantic == PASTED_LABEL, mask)
    np.testing.assert_array_equal(image[~mask], scene.image[~mask])
    np.testing.assert_array_equal(semantic[~mask], scene.semantic[~mask])
    rows, cols = np.nonzero(mask)
    assert abs(rows.mean() / 128 - 0.6) < 0.1 and abs(cols.mean() / 256 - 0.5) < 0.1


def test_paste_anomaly_is_reproducible_and_takes_a_label():
    results = []
    for _ in range(2):
        image, semantic = np.zeros((100, 150, 3), np.uint8), np.zeros((100, 150), np.uint8)
        mask = paste_anomaly(image, semantic, np.random.default_rng(7), "train", label=200)
        results.append((image, semantic, mask))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][2], results[1][2])
    assert set(np.unique(results[0][1])) == {0, 200}


def test_paste_anomaly_outside_the_image_pastes_nothing():
    image, semantic = np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.uint8)
    mask = paste_anomaly(image, semantic, np.random.default_rng(0), "eval", center=(3.0, 3.0), scale=0.2)
    assert not mask.any() and not image.any() and not semantic.any()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"height": 31},
        {"width": 16},
        {"height": 64.0},
        {"num_anomalies": -1},
        {"anomaly_family": "test"},
        {"anomaly_on_road": 1.5},
        {"anomaly_size": (0.0, 1.0)},
        {"void_border": -2},
        {"sequence_start": 5.0, "sequence_end": 8.0},
    ],
)
def test_bad_config_raises_value_error(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        SceneConfig(**kwargs)


def test_bad_generator_arguments_raise_value_error():
    with pytest.raises(ValueError, match="num_frames"):
        generate_sequence(0, 0, SMALL)
    with pytest.raises(ValueError, match="seed"):
        generate_scene(-1, SMALL)
    image, semantic = np.zeros((40, 40, 3), np.uint8), np.zeros((40, 40), np.uint8)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="family"):
        paste_anomaly(image, semantic, rng, "unknown")
    with pytest.raises(ValueError, match="image"):
        paste_anomaly(image.astype(np.float32), semantic, rng, "train")
    with pytest.raises(ValueError, match="semantic"):
        paste_anomaly(image, semantic[:-1], rng, "train")
    with pytest.raises(ValueError, match="scale"):
        paste_anomaly(image, semantic, rng, "train", scale=0.0)
    with pytest.raises(ValueError, match="center"):
        paste_anomaly(image, semantic, rng, "train", center=(0.5,))
    with pytest.raises(ValueError, match="label"):
        paste_anomaly(image, semantic, rng, "train", label=300)


def test_class_names_match_the_model():
    config = pytest.importorskip("m2a_perception.model.config")
    assert CLASS_NAMES == config.CITYSCAPES_CLASSES
    assert len(synthroad.CITYSCAPES_PALETTE) == len(CLASS_NAMES)


def test_colorize_semantic_uses_the_palette():
    semantic = np.array([[0, 13, IGNORE_ID, PASTED_LABEL]], np.uint8)
    colours = colorize_semantic(semantic)
    assert colours.shape == (1, 4, 3) and colours.dtype == np.uint8
    assert tuple(colours[0, 0]) == (128, 64, 128) and tuple(colours[0, 1]) == (0, 0, 142)
    assert tuple(colours[0, 2]) == (0, 0, 0) and tuple(colours[0, 3]) == (255, 255, 255)
