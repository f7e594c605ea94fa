"""Evaluation data sets, each read from its own folder layout and converted on load to m2a's conventions: anomaly
labels 0 = normal, 1 = anomaly, 255 = void; semantic labels Cityscapes trainIds 0..18, 255 = ignore.

Layouts under ``root`` (raw label values -> converted):
- ra21, ro21 (SMIYC RoadAnomaly21 / RoadObstacle21): ``images/<id>.{jpg,webp,png}`` with
  ``labels_masks/<id>_labels_semantic.png`` (0 / 1 / 255); images without a label (the test frames) are left out.
- fs_laf, fs_static (Fishyscapes Lost & Found / Static): ``original/<base>_leftImg8bit.png`` with
  ``labels/<base>_labels.png`` or ``labels/<same stem>.png`` (0 / 1 / 255); ``root`` may also be the folder
  holding ``LostAndFound/`` and ``Static/``.
- road_anomaly (Lis et al.): ``frames/<id>.{jpg,webp,png}`` with ``frames/<id>.labels/labels_semantic.png``
  (0 other -> 0, 1 road -> 0, 2 anomaly -> 1); ``frame_list.json``, when present, lists the frames.
- packaged (one data set folder of the authors' bundle): ``images/<id>.<ext>`` with ``labels_masks/<id>.png``
  (0 / 1 / 255; 2 -> 1 as well in a folder named RoadAnomaly*, the authors' rule).
- cityscapes: ``leftImg8bit/<split>/<city>/<id>_leftImg8bit.png`` with
  ``gtFine/<split>/<city>/<id>_gtFine_labelTrainIds.png`` (trainIds), else ``..._labelIds.png`` (labelIds through
  the official table).
- synthroad: no folder; `m2a_perception.synthroad` scenes with the held-out "eval" anomaly family.

Every failure names the folder or file that is missing or malformed. Files are untrusted: image sizes are checked
from the header before decoding, label values against the layout's convention.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from m2a_perception.synthroad import SceneConfig, generate_scene

MAX_PIXELS = 1 << 26  # 64 Mpx: larger files are refused before decoding
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
IGNORE_ID = 255
# Cityscapes labelId -> trainId (cityscapesScripts' labels.py); every other id 0..33 is ignored (255).
LABEL_ID_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
    27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
NUM_LABEL_IDS = 34  # labelIds 0..33 (the license plate's -1 never appears in the PNGs)
SYNTHROAD_SEED = 900_000  # first seed of the held-out generated scenes (training draws from low seeds)


# ----------------------------------------------------------------------------------------------------------
# Files


def _open_image(path: Path, what: str) -> Image.Image:
    """Open an image lazily and check its size from the header."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        image = Image.open(path)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{what} {path} is not a readable image: {e}") from e
    width, height = image.size
    if width < 1 or height < 1 or width * height > MAX_PIXELS:
        image.close()
        raise ValueError(f"{what} {path} is {width}x{height}: expected 1 .. {MAX_PIXELS} pixels")
    return image


def _decode(image: Image.Image, path: Path, what: str, mode: str | None = None) -> np.ndarray:
    try:
        with image:
            return np.asarray(image.convert(mode) if mode else image).copy()
    except (OSError, ValueError) as e:
        raise ValueError(f"{what} {path} could not be decoded: {e}") from e


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB."""
    path = Path(path)
    return _decode(_open_image(path, "image"), path, "image", "RGB")


def read_label_png(path: str | Path) -> np.ndarray:
    """A single-channel label image (8-bit, palette or 16-bit with values <= 255) as (H, W) uint8, raw values."""
    path = Path(path)
    image = _open_image(path, "label map")
    if image.mode not in ("L", "P", "I;16", "I;16B", "I"):
        image.close()
        raise ValueError(f"label map {path} must be a single-channel image, got PIL mode {image.mode!r}")
    array = _decode(image, path, "label map")
    if array.dtype != np.uint8:
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(f"label map {path} holds values outside 0..255 (max {int(array.max())})")
        array = array.astype(np.uint8)
    return array


def read_score_map(path: str | Path) -> np.ndarray:
    """A score map: ``.npy`` (float or integer (H, W), no pickles), or a single-channel 16-bit PNG / TIFF (values
    as stored, e.g. 0..65535); returned as is (the metrics check and widen the dtype)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"score map {path} does not exist")
    if path.suffix.lower() == ".npy":
        return _read_npy(path)
    image = _open_image(path, "score map")
    if image.mode not in ("I;16", "I;16B", "I", "F", "L"):
        image.close()
        raise ValueError(
            f"score map {path} must be a single-channel 8/16-bit integer or 32-bit float image, got PIL mode "
            f"{image.mode!r}"
        )
    return _decode(image, path, "score map")


def _read_npy(path: Path) -> np.ndarray:
    """Check a .npy header (2-D, numeric, size) before loading it with allow_pickle=False."""
    with path.open("rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except ValueError as e:
            raise ValueError(f"score map {path} is not a valid .npy file: {e}") from e
    if len(shape) != 2 or dtype.kind not in "fiu" or dtype.hasobject:
        raise ValueError(f"score map {path} must hold an (H, W) numeric array, got shape {shape} dtype {dtype}")
    if shape[0] * shape[1] > MAX_PIXELS:
        raise ValueError(f"score map {path} is {shape[0]}x{shape[1]}: more than {MAX_PIXELS} pixels")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"score map {path} could not be read: {e}") from e


# ----------------------------------------------------------------------------------------------------------
# Label conventions


def _remap(raw: np.ndarray, table: dict[int, int], path: Path, convention: str) -> np.ndarray:
    """Map raw label values through `table`; any value not in it is an error naming the file."""
    lut = np.full(256, -1, np.int16)
    for src, dst in table.items():
        lut[src] = dst
    mapped = lut[raw]
    if (mapped < 0).any():
        bad = np.unique(raw[mapped < 0])[:8].tolist()
        raise ValueError(f"label map {path} holds values {bad}, not allowed in {convention} ({sorted(table)})")
    return mapped.astype(np.uint8)


ANOMALY_01 = {0: 0, 1: 1, 255: 255}  # SMIYC, Fishyscapes, packaged: 0 normal, 1 anomaly, 255 void
ROAD_ANOMALY = {0: 0, 1: 0, 2: 1, 255: 255}  # Road Anomaly: 0 background, 1 road, 2 anomaly
PACKAGED_ROAD_ANOMALY = {0: 0, 1: 1, 2: 1, 255: 255}  # the authors' script: 2 -> 1 under "RoadAnomaly"
TRAIN_IDS = {**{i: i for i in range(19)}, 255: 255}
LABEL_IDS = {i: LABEL_ID_TO_TRAIN_ID.get(i, IGNORE_ID) for i in range(NUM_LABEL_IDS)}


# ----------------------------------------------------------------------------------------------------------
# Data sets


@dataclass(frozen=True)
class Frame:
    """One evaluation frame; `anomaly` or `semantic` is None where the data set has no such labels."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    anomaly: np.ndarray | None  # (H, W) uint8: 0 normal, 1 anomaly, 255 void
    semantic: np.ndarray | None  # (H, W) uint8 trainIds, 255 ignore


@dataclass(frozen=True)
class Sample:
    """Where one frame's files are, and how its labels convert."""

    name: str
    image: Path
    label: Path
    table: dict[int, int]  # raw label value -> converted value


class Benchmark(Sequence[Frame]):
    """A folder data set: frames in name order, loaded on access.

    kind: "anomaly" (labels 0/1/255) or "semantic" (trainIds); track: the SMIYC size filters that suit it.
    """

    def __init__(self, name: str, root: Path, samples: list[Sample], kind: str, track: str) -> None:
        if not samples:
            raise FileNotFoundError(f"{name}: no frames found under {root}")
        self.name = name
        self.root = root
        self.samples = sorted(samples, key=lambda s: s.name)
        self.kind = kind
        self.track = track
        names = [s.name for s in self.samples]
        if len(set(names)) != len(names):
            raise ValueError(f"{name}: frame names under {root} are not unique")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Frame:  # type: ignore[override]
        sample = self.samples[index]
        image = read_rgb(sample.image)
        label = _remap(read_label_png(sample.label), sample.table, sample.label, self.name)
        if label.shape != image.shape[:2]:
            raise ValueError(
                f"label map {sample.label} is {label.shape[1]}x{label.shape[0]} but its image {sample.image} is "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        if self.kind == "anomaly":
            return Frame(sample.name, image, label, None)
        return Frame(sample.name, image, None, label)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.samples]


class SynthRoadBenchmark(Sequence[Frame]):
    """Generated held-out scenes: frame i is `generate_scene(seed + i)` with the "eval" anomaly family."""

    kind = "both"
    track = "anomaly"
    name = "synthroad"

    def __init__(self, num_frames: int = 20, height: int = 256, width: int = 512, seed: int = SYNTHROAD_SEED) -> None:
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"synthroad: num_frames must be a positive integer, got {num_frames!r}")
        self.config = SceneConfig(height=height, width=width, anomaly_family="eval")
        self.num_frames = num_frames
        self.seed = seed
        self.root = None

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, index: int) -> Frame:  # type: ignore[override]
        if not 0 <= index < self.num_frames:
            raise IndexError(f"synthroad frame {index} out of range 0..{self.num_frames - 1}")
        scene = generate_scene(self.seed + index, self.config)
        return Frame(self.names[index], scene.image, scene.anomaly, scene.semantic)

    @property
    def names(self) -> list[str]:
        return [f"synthroad_{self.seed + i:07d}" for i in range(self.num_frames)]


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: folder {path} does not exist")
    return path


def _images_by_stem(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()}


def smiyc(root: str | Path, track: str = "anomaly") -> Benchmark:
    """SMIYC RoadAnomaly21 (track "anomaly") or RoadObstacle21 ("obstacle"), the benchmark's own layout."""
    root = Path(root)
    name = "ra21" if track == "anomaly" else "ro21"
    images = _images_by_stem(_require_dir(root / "images", name))
    label_dir = _require_dir(root / "labels_masks", name)
    suffix = "_labels_semantic"
    samples = []
    for label in sorted(label_dir.glob(f"*{suffix}.png")):
        stem = label.name[: -len(suffix + ".png")]
        if stem not in images:
            raise FileNotFoundError(f"{name}: label {label} has no image {root / 'images' / stem}.<jpg|webp|png>")
        samples.append(Sample(stem, images[stem], label, ANOMALY_01))
    if not samples:
        raise FileNotFoundError(f"{name}: no *{suffix}.png labels in {label_dir}")
    return Benchmark(name, root, samples, "anomaly", track)


def fishyscapes(root: str | Path, split: str = "LostAndFound") -> Benchmark:
    """Fishyscapes Lost & Found or Static validation: ``original/`` images and ``labels/`` masks."""
    root = Path(root)
    name = "fs_laf" if split == "LostAndFound" else "fs_static"
    if not (root / "original").is_dir() and (root / split / "original").is_dir():
        root = root / split
    images = _images_by_stem(_require_dir(root / "original", name))
    label_dir = _require_dir(root / "labels", name)
    samples = []
    for stem, image in images.items():
        candidates = [label_dir / f"{stem.replace('leftImg8bit', 'labels')}.png", label_dir / f"{stem}.png"]
        label = next((c for c in candidates if c.is_file()), None)
        if label is None:
            raise FileNotFoundError(f"{name}: image {image} has no label {candidates[0]}")
        samples.append(Sample(stem.removesuffix("_leftImg8bit"), image, label, ANOMALY_01))
    return Benchmark(name, root, samples, "anomaly", "anomaly")


def road_anomaly(root: str | Path) -> Benchmark:
    """Road Anomaly (Lis et al. 2019): ``frames/<id>.<ext>`` with ``frames/<id>.labels/labels_semantic.png``."""
    root = Path(root)
    frames = _require_dir(root / "frames", "road_anomaly")
    listing = root / "frame_list.json"
    if listing.is_file():
        try:
            files = [frames / str(f) for f in json.loads(listing.read_text())]
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
            raise ValueError(f"road_anomaly: {listing} is not a JSON list of file names: {e}") from e
    else:
        files = [p for p in sorted(frames.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS]
    samples = []
    for image in files:
        if not image.is_file():
            raise FileNotFoundError(f"road_anomaly: image {image} (listed in {listing}) does not exist")
        label = frames / f"{image.stem}.labels" / "labels_semantic.png"
        if not label.is_file():
            raise FileNotFoundError(f"road_anomaly: image {image} has no label {label}")
        samples.append(Sample(image.stem, image, label, ROAD_ANOMALY))
    return Benchmark("road_anomaly", root, samples, "anomaly", "anomaly")


def packaged(root: str | Path) -> Benchmark:
    """One data set of the authors' evaluation bundle: ``images/`` and ``labels_masks/<stem>.png``; the track is
    "obstacle" for a folder named like RoadObsticle21 / RoadObstacle21, else "anomaly"."""
    root = Path(root)
    images = _images_by_stem(_require_dir(root / "images", "packaged"))
    label_dir = _require_dir(root / "labels_masks", "packaged")
    table = PACKAGED_ROAD_ANOMALY if "RoadAnomaly" in root.name else ANOMALY_01
    samples = []
    for stem, image in images.items():
        label = label_dir / f"{stem}.png"
        if not label.is_file():
            raise FileNotFoundError(f"packaged: image {image} has no label {label}")
        samples.append(Sample(stem, image, label, table))
    track = "obstacle" if "obst" in root.name.lower() else "anomaly"
    return Benchmark("packaged", root, samples, "anomaly", track)


def cityscapes(root: str | Path, split: str = "val") -> Benchmark:
    """Cityscapes `split` with fine trainIds (``*_gtFine_labelTrainIds.png``, else converted ``*_labelIds.png``)."""
    root = Path(root)
    image_dir = _require_dir(root / "leftImg8bit" / split, "cityscapes")
    _require_dir(root / "gtFine" / split, "cityscapes")
    samples = []
    for image in sorted(image_dir.glob("*/*_leftImg8bit.png")):
        stem = image.name.removesuffix("_leftImg8bit.png")
        folder = root / "gtFine" / split / image.parent.name
        train_ids = folder / f"{stem}_gtFine_labelTrainIds.png"
        label_ids = folder / f"{stem}_gtFine_labelIds.png"
        if train_ids.is_file():
            samples.append(Sample(stem, image, train_ids, TRAIN_IDS))
        elif label_ids.is_file():
            samples.append(Sample(stem, image, label_ids, LABEL_IDS))
        else:
            raise FileNotFoundError(f"cityscapes: image {image} has no label {train_ids} (nor {label_ids.name})")
    if not samples:
        raise FileNotFoundError(f"cityscapes: no */*_leftImg8bit.png images in {image_dir}")
    return Benchmark("cityscapes", root, samples, "semantic", "anomaly")


OPENERS: dict[str, Callable[[Path], Benchmark]] = {
    "ra21": lambda root: smiyc(root, "anomaly"),
    "ro21": lambda root: smiyc(root, "obstacle"),
    "fs_laf": lambda root: fishyscapes(root, "LostAndFound"),
    "fs_static": lambda root: fishyscapes(root, "Static"),
    "road_anomaly": road_anomaly,
    "packaged": packaged,
    "cityscapes": cityscapes,
}
DATASETS: tuple[str, ...] = (*OPENERS, "synthroad")


def open_benchmark(name: str, root: str | Path) -> Benchmark:
    """The folder data set `name` (one of `OPENERS`) found under `root`."""
    if name not in OPENERS:
        raise ValueError(f"unknown data set {name!r}; expected one of {sorted(OPENERS)} (or 'synthroad')")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{name}: root folder {root} does not exist")
    return OPENERS[name](root)


__all__ = [
    "DATASETS",
    "LABEL_ID_TO_TRAIN_ID",
    "MAX_PIXELS",
    "Benchmark",
    "Frame",
    "Sample",
    "SynthRoadBenchmark",
    "cityscapes",
    "fishyscapes",
    "open_benchmark",
    "packaged",
    "read_label_png",
    "read_rgb",
    "read_score_map",
    "road_anomaly",
    "smiyc",
]
