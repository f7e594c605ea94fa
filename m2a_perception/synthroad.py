"""Procedural road scenes with anomalies: the project's stand-in for Cityscapes and the anomaly benchmarks.

A scene is a straight street seen by a forward-looking camera: sky above the horizon, buildings and vegetation
on both sides, a road with lane markings converging to the vanishing point, sidewalks beside it, and vehicles,
persons, riders, poles, signs, traffic lights and trees standing on the ground, all scaled by depth. Anomalies
are flat, oddly shaped, vividly patterned objects, standing mostly on the road (obstacles), that belong to no
Cityscapes class.

Everything is built in metres and projected by a pinhole camera into image coordinates normalised to [0, 1];
pixels come last, so the same seed gives the same layout at every resolution. Randomness flows only through
`np.random.Generator` objects seeded from the caller's seed, one stream per purpose (layout, traffic,
anomalies, texture fields, per-frame sensor noise), so the same seed and arguments give byte-identical arrays
on every run, and the anomaly settings never change the street itself (only where traffic goes: vehicles and
pedestrians are kept from hiding anomalies).

Labels of a `Scene` (H = height, W = width):
    image     (H, W, 3) uint8  RGB
    semantic  (H, W) uint8     Cityscapes trainIds 0..18 (`CLASS_NAMES`); 255 where an anomaly is seen
    anomaly   (H, W) uint8     0 = normal, 1 = anomaly, 255 = void (SMIYC convention): a ring
                               `SceneConfig.void_border` pixels wide around each anomaly (default 0: no void);
                               in that ring `semantic` keeps the class of what is seen there
`paste_anomaly` instead writes `PASTED_LABEL` (254) into a semantic map, for training's outlier pasting.

The two anomaly families ("train", "eval") share no shape kind and no texture kind (`ANOMALY_SHAPES`,
`ANOMALY_TEXTURES`), so a model trained with one can be evaluated on anomalies it has never seen.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math
from collections.abc import Iterator
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from m2a_perception.classes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, IGNORE_ID, TRAIN_IDS

__all__ = [
    "ANOMALY_FAMILIES",
    "ANOMALY_SHAPES",
    "ANOMALY_TEXTURES",
    "CITYSCAPES_PALETTE",
    "CLASS_NAMES",
    "IGNORE_ID",
    "MIN_IMAGE_SIZE",
    "PASTED_LABEL",
    "TRAIN_IDS",
    "AnomalyFamily",
    "Scene",
    "SceneConfig",
    "SceneSequence",
    "colorize_semantic",
    "generate_scene",
    "generate_sequence",
    "paste_anomaly",
]

AnomalyFamily = Literal["train", "eval"]

CLASS_NAMES: tuple[str, ...] = CITYSCAPES_CLASSES
PASTED_LABEL = 254  # what `paste_anomaly` writes into a semantic map (the authors' outlier-exposure label)

ANOMALY_FAMILIES: tuple[str, ...] = ("train", "eval")
ANOMALY_SHAPES: dict[str, tuple[str, ...]] = {
    "train": ("ellipse", "box", "cylinder"),
    "eval": ("star", "ring", "irregular", "crescent"),
}
ANOMALY_TEXTURES: dict[str, tuple[str, ...]] = {
    "train": ("stripes", "checker", "zigzag"),
    "eval": ("spots", "noise", "gradient"),
}
MIN_IMAGE_SIZE = 32

_ROAD, _SIDEWALK, _BUILDING, _WALL, _FENCE, _POLE, _LIGHT, _SIGN = range(8)
_VEGETATION, _TERRAIN, _SKY, _PERSON, _RIDER, _CAR, _TRUCK, _BUS, _BICYCLE = 8, 9, 10, 11, 12, 13, 14, 15, 18

# Camera and scene extent, in metres. The camera looks along +Z from (0, _CAMERA_HEIGHT, z).
_CAMERA_HEIGHT = 1.8
_BOTTOM_DEPTH = 5.5  # the road meets the bottom image row this far ahead
_LATERAL_SCALE = 0.5  # nominal height / width: lateral focal length (in widths) = focal (in heights) * this
_NEAR = 1.0  # nearer geometry is clipped
_GROUND_FAR = 1000.0  # ground strips and the backdrop end here, about a pixel below the horizon
_OBJECT_FAR = 150.0  # street objects are generated up to this far ahead of the camera's last position
_MARKING_FAR = 400.0  # lane dashes end here
_SHADOW_FAR = 30.0  # vehicle shadows farther than this would be sub-pixel slivers spilling onto the curb
_SUBPIXEL_BITS = 4  # cv2.fillPoly fractional bits: edges land within 1/16 px at every resolution
_SUBPIXEL = float(1 << _SUBPIXEL_BITS)
_MOTTLE_GRID = (64, 128)  # mid-frequency texture field, resized to the image (resolution independent)
_LIGHT_GRID = (5, 10)  # slow illumination field

# Independent random streams, one per purpose (see the module docstring).
_LAYOUT_STREAM, _TRAFFIC_STREAM, _ANOMALY_STREAM, _FIELD_STREAM, _SENSOR_STREAM = 1, 2, 3, 4, 5

# Base colours (RGB, before per-scene lighting); each pick is jittered.
_SIDEWALK_COLOURS = ((150, 150, 150), (172, 126, 120), (178, 160, 135), (136, 131, 126))
_FACADE_COLOURS = (
    (175, 155, 125), (140, 110, 90), (150, 150, 155), (195, 176, 160), (126, 82, 70), (205, 195, 175),
    (112, 116, 126),
)  # fmt: skip
_WINDOW_COLOURS = ((45, 55, 75), (60, 72, 92), (110, 130, 150), (35, 38, 45))
_CAR_COLOURS = (
    (225, 225, 225), (30, 30, 32), (160, 163, 168), (80, 82, 86), (35, 45, 85), (105, 25, 30), (40, 65, 50),
    (175, 165, 140),
)  # fmt: skip
_TRUCK_COLOURS = ((230, 230, 230), (175, 65, 45), (60, 90, 140), (200, 200, 188))
_BUS_COLOURS = ((215, 185, 40), (190, 45, 40), (232, 232, 232), (40, 90, 160))
_SKIN_COLOURS = ((235, 195, 165), (200, 150, 115), (140, 95, 70), (95, 65, 45))
_HAIR_COLOURS = ((30, 25, 20), (80, 55, 35), (150, 120, 70), (20, 20, 20), (170, 170, 165))
_CLOTHES_COLOURS = (
    (30, 32, 40), (60, 60, 62), (140, 30, 35), (35, 60, 120), (200, 200, 195), (90, 70, 50), (45, 90, 60),
    (170, 140, 60), (110, 60, 120),
)  # fmt: skip
_SIGN_COLOURS = ((25, 65, 165), (200, 30, 35), (235, 190, 35))

RGB = tuple[float, float, float]


# ------------------------------------------------------------------------------------------------------------
# Public types
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SceneConfig:
    """What to generate: image size, anomalies and scene knobs; validated here so generators never see bad values."""

    height: int = 512
    width: int = 1024
    num_anomalies: int = 1
    anomaly_family: AnomalyFamily = "eval"
    max_vehicles: int = 6  # a scene has 1..max_vehicles cars, trucks and buses (none if 0)
    max_persons: int = 4  # 0..max_persons pedestrians, and sometimes a rider crossing (none if 0)
    anomaly_on_road: float = 0.85  # probability that an anomaly stands on the road rather than a sidewalk
    anomaly_size: tuple[float, float] = (0.35, 1.5)  # range of an anomaly's height, metres
    void_border: int = 0  # width in pixels of the void ring (255) around each anomaly in `Scene.anomaly`
    texture_noise: float = 1.0  # scales every texture and sensor-noise amplitude (0: flat colours)
    sequence_start: float = 60.0  # metres from the camera to the obstacle in a sequence's first frame
    sequence_end: float = 8.0  # ... and in its last frame

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            _check_int(name, getattr(self, name), MIN_IMAGE_SIZE)
        for name in ("num_anomalies", "max_vehicles", "max_persons", "void_border"):
            _check_int(name, getattr(self, name), 0)
        _check_family(self.anomaly_family, "anomaly_family")
        if not 0.0 <= self.anomaly_on_road <= 1.0:
            raise ValueError(f"anomaly_on_road must be a probability in [0, 1], got {self.anomaly_on_road!r}")
        low, high = self.anomaly_size
        if not 0.0 < low <= high:
            raise ValueError(f"anomaly_size must be (low, high) metres with 0 < low <= high, got {self.anomaly_size!r}")
        if not self.texture_noise >= 0.0:
            raise ValueError(f"texture_noise must be >= 0, got {self.texture_noise!r}")
        if not 2.0 <= self.sequence_end < self.sequence_start:
            raise ValueError(
                "need 2 <= sequence_end < sequence_start (metres), "
                f"got sequence_end={self.sequence_end!r}, sequence_start={self.sequence_start!r}"
            )


@dataclass(frozen=True)
class Scene:
    """One rendered frame with its labels (see the module docstring for the label conventions)."""

    image: np.ndarray  # (height, width, 3) uint8 RGB
    semantic: np.ndarray  # (height, width) uint8 Cityscapes trainIds, 255 at anomalies
    anomaly: np.ndarray  # (height, width) uint8: 0 normal, 1 anomaly, 255 void


# ------------------------------------------------------------------------------------------------------------
# Argument checks
# ------------------------------------------------------------------------------------------------------------
def _check_int(name: str, value: object, minimum: int) -> None:
    """Raise ValueError unless `value` is an int (not a bool) >= minimum."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_family(family: object, name: str = "family") -> None:
    """Raise ValueError unless `family` names an anomaly family."""
    if family not in ANOMALY_FAMILIES:
        raise ValueError(f"{name} must be one of {ANOMALY_FAMILIES}, got {family!r}")


def _check_image_pair(image: object, semantic: object) -> None:
    """Raise ValueError unless image is (H, W, 3) uint8 and semantic (H, W) uint8 of the same size."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be a (H, W, 3) uint8 array, got {_describe(image)}")
    if not isinstance(semantic, np.ndarray) or semantic.dtype != np.uint8 or semantic.shape != image.shape[:2]:
        raise ValueError(f"semantic must be a {image.shape[:2]} uint8 array like the image, got {_describe(semantic)}")


def _describe(array: object) -> str:
    """Shape and dtype of an array, or the type of anything else, for error messages."""
    if isinstance(array, np.ndarray):
        return f"shape {array.shape} dtype {array.dtype}"
    return type(array).__name__


# ------------------------------------------------------------------------------------------------------------
# Camera and drawing surface
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Camera:
    """Pinhole camera looking down the road; projects world metres to normalised image coordinates."""

    horizon: float  # normalised row of the horizon (0 top, 1 bottom)
    centre: float  # normalised column of the vanishing point
    z: float = 0.0  # distance travelled along the road

    @property
    def focal(self) -> float:
        """Focal length in image heights, chosen so that the road meets the bottom row at _BOTTOM_DEPTH."""
        return (1.0 - self.horizon) * _BOTTOM_DEPTH / _CAMERA_HEIGHT

    def project(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) world X right, Y up, Z ahead (in front of the near plane) -> (..., 2) normalised (x, y)."""
        depth = points[..., 2] - self.z
        x = self.centre + self.focal * _LATERAL_SCALE * points[..., 0] / depth
        y = self.horizon + self.focal * (_CAMERA_HEIGHT - points[..., 1]) / depth
        return np.stack([x, y], axis=-1)


@dataclass(frozen=True)
class _Stamp:
    """Where an anomaly was rasterised in a frame, so its texture can be painted on its visible pixels."""

    material: int
    rows: slice
    cols: slice
    shading: np.ndarray  # (rows, cols) float32 face brightness, 0 outside the object
    box: tuple[float, float, float, float]  # left, top, right, bottom of the whole object, pixels
    texture: _Texture


class _Canvas:
    """A frame being drawn: a material id per pixel (painter's order) plus the anomaly stamps."""

    def __init__(self, camera: _Camera, height: int, width: int) -> None:
        self.camera = camera
        self.height = height
        self.width = width
        self.ids = np.zeros((height, width), dtype=np.uint16)  # material 0 is the sky
        self.stamps: list[_Stamp] = []
        self._scale = np.array([width, height], dtype=np.float64)

    def to_pixels(self, normalised: np.ndarray) -> np.ndarray:
        """Normalised (x, y) -> pixel (column, row) with pixel centres at integers."""
        return normalised * self._scale - 0.5

    def fill(self, contours: list[np.ndarray] | np.ndarray, material: int) -> None:
        """Fill pixel-coordinate polygons ((n, 2) each) in one call (overlaps cancel, which cuts holes)."""
        if isinstance(contours, np.ndarray):  # (count, n, 2): convert all at once
            points = list(np.round(contours * _SUBPIXEL).astype(np.int32))
        else:
            points = [np.round(contour * _SUBPIXEL).astype(np.int32) for contour in contours]
        cv2.fillPoly(self.ids, points, int(material), cv2.LINE_8, _SUBPIXEL_BITS)

    def fill_world(self, contours: tuple[np.ndarray, ...], material: int) -> None:
        """Clip world polygons at the near plane, project and fill them."""
        pixels = []
        for contour in contours:
            clipped = _clip_near(contour, self.camera.z)
            if clipped is not None:
                pixels.append(self.to_pixels(self.camera.project(clipped)))
        if pixels:
            self.fill(pixels, material)

    def stamp(self, appearance: _Appearance, box: tuple[float, float, float, float], material: int) -> None:
        """Rasterise an anomaly's faces inside `box` (pixels) into the id map and remember it for texturing."""
        region = _box_region(box, self.height, self.width)
        if region is None:
            return
        rows, cols = region
        shading = _rasterise_faces(appearance.faces, box, rows, cols)
        self.ids[rows, cols][shading > 0] = material
        self.stamps.append(_Stamp(material, rows, cols, shading, box, appearance.texture))


def _clip_near(points: np.ndarray, camera_z: float) -> np.ndarray | None:
    """Clip a planar polygon (n, 3) to depth >= _NEAR (Sutherland-Hodgman); None when nothing is left."""
    depth = points[:, 2] - camera_z
    inside = depth >= _NEAR
    if inside.all():
        return points
    if not inside.any():
        return None
    kept = []
    count = len(points)
    for i in range(count):
        j = (i + 1) % count
        if inside[i]:
            kept.append(points[i])
        if inside[i] != inside[j]:
            t = (_NEAR - depth[i]) / (depth[j] - depth[i])
            kept.append(points[i] + t * (points[j] - points[i]))
    return np.array(kept) if len(kept) >= 3 else None


def _box_region(box: tuple[float, float, float, float], height: int, width: int) -> tuple[slice, slice] | None:
    """Pixel rows and columns an object's box (left, top, right, bottom) covers inside the image."""
    left, top, right, bottom = box
    x0, x1 = max(math.floor(left), 0), min(math.ceil(right) + 1, width)
    y0, y1 = max(math.floor(top), 0), min(math.ceil(bottom) + 1, height)
    if x0 >= x1 or y0 >= y1:
        return None
    return slice(y0, y1), slice(x0, x1)


# ------------------------------------------------------------------------------------------------------------
# Materials: how each surface looks
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Material:
    """A surface's class and appearance: base colour and texture amplitudes in grey levels, before lighting."""

    class_id: int
    rgb: RGB
    grain: float = 4.0  # standard deviation of per-pixel noise
    mottle: RGB = (4.0, 4.0, 4.0)  # amplitude of the mid-frequency texture field, per channel
    shading: float = 0.08  # relative amplitude of the slow illumination field
    gradient: RGB = (0.0, 0.0, 0.0)  # colour change from the top to the bottom of the image (sky)
    is_anomaly: bool = False


class _MaterialTable:
    """Materials of one scene, indexed by the ids drawn into a `_Canvas` (id 0 is the sky)."""

    def __init__(self) -> None:
        self.materials: list[_Material] = []

    def add(self, material: _Material) -> int:
        """Register a material and return its id."""
        self.materials.append(material)
        return len(self.materials) - 1

    def params(self, noise: float) -> np.ndarray:
        """(11, num_materials) float32 rows: rgb, gradient, mottle (3 each), grain, shading; noise scaled by `noise`.

        One contiguous row per parameter, so that shading gathers whole image planes (fast) rather than pixels.
        """
        rows = [
            (*m.rgb, *m.gradient, *(noise * a for a in m.mottle), noise * m.grain, m.shading) for m in self.materials
        ]
        return np.ascontiguousarray(np.array(rows, dtype=np.float32).T)

    def classes(self) -> np.ndarray:
        """(num_materials,) uint8 trainId of each material (255 for anomalies)."""
        return np.array([m.class_id for m in self.materials], dtype=np.uint8)

    def anomaly_flags(self) -> np.ndarray:
        """(num_materials,) uint8: 1 for anomaly materials, else 0."""
        return np.array([m.is_anomaly for m in self.materials], dtype=np.uint8)


def _jitter(rng: np.random.Generator, rgb: tuple[float, ...], amount: float) -> RGB:
    """A colour near `rgb`: each channel moved by up to `amount` grey levels."""
    moved = np.clip(np.asarray(rgb, dtype=np.float64) + rng.uniform(-amount, amount, 3), 0.0, 255.0)
    return (float(moved[0]), float(moved[1]), float(moved[2]))


def _pick(rng: np.random.Generator, palette: tuple[tuple[int, int, int], ...], amount: float) -> RGB:
    """A jittered colour from a palette."""
    return _jitter(rng, palette[int(rng.integers(len(palette)))], amount)


def _scaled(rgb: RGB, factor: float) -> RGB:
    """A colour made darker (factor < 1) or brighter."""
    return (min(rgb[0] * factor, 255.0), min(rgb[1] * factor, 255.0), min(rgb[2] * factor, 255.0))


@dataclass(frozen=True)
class _Look:
    """Material ids of the surfaces shared across a scene (one road colour, one glass, ...)."""

    sky: int
    cloud: int
    terrain: int
    road: int
    marking: int
    shadow: int
    sidewalk: int
    curb: int
    joint: int
    pole: int
    glass: int
    tyre: int
    tail_light: int
    plate: int
    light_housing: int
    lamp_off: int
    lamps_on: tuple[int, int, int]  # red, amber, green
    sign_white: int
    signs: tuple[int, ...]  # blue, red, yellow


def _make_look(table: _MaterialTable, rng: np.random.Generator) -> _Look:
    """Sample the scene's colours for shared surfaces (the per-scene colour variation)."""
    top = _jitter(rng, (95, 145, 215), 25)
    bottom = _jitter(rng, (205, 220, 238), 12)
    gradient = ((bottom[0] - top[0]) / 0.45, (bottom[1] - top[1]) / 0.45, (bottom[2] - top[2]) / 0.45)
    sky = table.add(_Material(_SKY, top, 1.5, (3, 3, 3), 0.02, gradient))  # first material: id 0, the canvas fill
    road_grey = rng.uniform(72, 105)
    road_rgb = _jitter(rng, (road_grey, road_grey, road_grey + 2), 4)
    sidewalk_rgb = _pick(rng, _SIDEWALK_COLOURS, 10)
    marking_rgb = _jitter(rng, (228, 228, 222), 10)
    return _Look(
        sky=sky,
        cloud=table.add(_Material(_SKY, _jitter(rng, (236, 238, 242), 8), 2.0, (10, 10, 10), 0.04)),
        terrain=table.add(_Material(_TERRAIN, _jitter(rng, (125, 142, 72), 15), 9.0, (14, 20, 8), 0.12)),
        road=table.add(_Material(_ROAD, road_rgb, 6.0, (5, 5, 5), 0.12)),
        marking=table.add(_Material(_ROAD, marking_rgb, 5.0, (6, 6, 6), 0.08)),
        shadow=table.add(_Material(_ROAD, _scaled(road_rgb, 0.5), 3.0, (2, 2, 2), 0.05)),
        sidewalk=table.add(_Material(_SIDEWALK, sidewalk_rgb, 7.0, (8, 8, 8), 0.1)),
        curb=table.add(_Material(_SIDEWALK, _jitter(rng, (195, 195, 190), 10), 5.0, (4, 4, 4), 0.08)),
        joint=table.add(_Material(_SIDEWALK, _scaled(sidewalk_rgb, 0.78), 4.0, (4, 4, 4), 0.08)),
        pole=table.add(_Material(_POLE, _jitter(rng, (75, 78, 80), 15), 3.0, (3, 3, 3), 0.05)),
        glass=table.add(_Material(_CAR, _jitter(rng, (38, 48, 62), 8), 3.0, (3, 3, 3), 0.04)),
        tyre=table.add(_Material(_CAR, (22, 22, 24), 2.0, (2, 2, 2), 0.02)),
        tail_light=table.add(_Material(_CAR, (175, 22, 25), 3.0, (3, 3, 3), 0.03)),
        plate=table.add(_Material(_CAR, (226, 226, 214), 3.0, (2, 2, 2), 0.03)),
        light_housing=table.add(_Material(_LIGHT, (32, 33, 35), 2.0, (2, 2, 2), 0.03)),
        lamp_off=table.add(_Material(_LIGHT, (62, 58, 50), 2.0, (2, 2, 2), 0.03)),
        lamps_on=(
            table.add(_Material(_LIGHT, (235, 45, 35), 3.0, (2, 2, 2), 0.02)),
            table.add(_Material(_LIGHT, (242, 172, 35), 3.0, (2, 2, 2), 0.02)),
            table.add(_Material(_LIGHT, (45, 225, 115), 3.0, (2, 2, 2), 0.02)),
        ),
        sign_white=table.add(_Material(_SIGN, (236, 236, 232), 3.0, (2, 2, 2), 0.03)),
        signs=tuple(table.add(_Material(_SIGN, rgb, 3.0, (2, 2, 2), 0.03)) for rgb in _SIGN_COLOURS),
    )


# ------------------------------------------------------------------------------------------------------------
# World geometry: parts (what is drawn) and things (what is depth-sorted)
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Polygon:
    """Flat world polygons of one material, in metres; several contours are filled even-odd (holes)."""

    contours: tuple[np.ndarray, ...]  # each (n, 3) X, Y, Z
    material: int

    def depth_range(self) -> tuple[float, float]:
        """Nearest and farthest world Z."""
        zs = np.concatenate([c[:, 2] for c in self.contours])
        return float(zs.min()), float(zs.max())

    def draw(self, canvas: _Canvas) -> None:
        """Clip, project and fill."""
        canvas.fill_world(self.contours, self.material)


@dataclass(frozen=True)
class _QuadBatch:
    """Many small quads of one material (windows, dashes, joints): each is dropped whole behind the near plane."""

    quads: np.ndarray  # (n, 4, 3)
    material: int
    max_depth: float = math.inf  # quads farther than this from the camera are not drawn

    def depth_range(self) -> tuple[float, float]:
        """Nearest and farthest world Z."""
        return float(self.quads[..., 2].min()), float(self.quads[..., 2].max())

    def draw(self, canvas: _Canvas) -> None:
        """Project the quads between the near plane and `max_depth` and fill them in one call."""
        depth = self.quads[..., 2].min(axis=1) - canvas.camera.z
        quads = self.quads[(depth >= _NEAR) & (depth <= self.max_depth)]
        if len(quads):
            canvas.fill(canvas.to_pixels(canvas.camera.project(quads)), self.material)


@dataclass(frozen=True)
class _Texture:
    """An anomaly's texture: kind, colours and kind-specific parameters, all in object-normalised units."""

    kind: str
    colours: np.ndarray  # (k, 3) float32 RGB
    params: dict[str, np.ndarray | float]


@dataclass(frozen=True)
class _Appearance:
    """An anomaly's shape and texture, independent of where and how large it is drawn."""

    shape: str
    faces: tuple[tuple[np.ndarray, float], ...]  # (n, 2) polygons in the unit box [-1, 1]^2, brightness (0 = hole)
    texture: _Texture


@dataclass(frozen=True)
class _AnomalyObject:
    """An anomaly standing on the ground at (x, z), facing the camera; it belongs to no class."""

    x: float
    z: float
    width: float
    height: float
    appearance: _Appearance
    material: int

    def depth_range(self) -> tuple[float, float]:
        """Nearest and farthest world Z (it is flat)."""
        return self.z, self.z

    def footprint(self) -> _Footprint:
        """Where it stands and how tall it is."""
        return _Footprint(self.x - self.width / 2, self.x + self.width / 2, self.z, self.z + 0.05, self.height)

    def draw(self, canvas: _Canvas) -> None:
        """Project the object's box and stamp its shape into the canvas."""
        depth = self.z - canvas.camera.z
        if depth < _NEAR:
            return
        column, bottom = canvas.to_pixels(canvas.camera.project(np.array([self.x, 0.0, self.z])))
        half_width = canvas.camera.focal * _LATERAL_SCALE * self.width / (2 * depth) * canvas.width
        height = canvas.camera.focal * self.height / depth * canvas.height
        box = (float(column - half_width), float(bottom - height), float(column + half_width), float(bottom))
        canvas.stamp(self.appearance, box, self.material)


_Part = _Polygon | _QuadBatch | _AnomalyObject


@dataclass(frozen=True)
class _Thing:
    """A group of parts drawn together, in order; things are drawn far to near by their nearest depth."""

    near: float
    far: float
    parts: tuple[_Part, ...]

    def visible_from(self, camera_z: float) -> bool:
        """Whether any of it can be in front of the camera's near plane."""
        return self.far - camera_z >= _NEAR


def _thing(parts: list[_Part]) -> _Thing:
    """Group parts, recording their depth range."""
    ranges = [part.depth_range() for part in parts]
    return _Thing(min(r[0] for r in ranges), max(r[1] for r in ranges), tuple(parts))


def _far_to_near(things: list[_Thing]) -> tuple[_Thing, ...]:
    """Painter's order (stable, so equal depths keep their generation order)."""
    return tuple(sorted(things, key=lambda thing: -thing.near))


def _poly(material: int, *contours: np.ndarray) -> _Polygon:
    """A `_Polygon` from (n, 3) contours."""
    return _Polygon(tuple(np.asarray(c, dtype=np.float64) for c in contours), material)


def _quad_x(x: float, y0: float, y1: float, z0: float, z1: float) -> np.ndarray:
    """Rectangle in the vertical plane X = x (parallel to the road)."""
    return np.array([(x, y0, z0), (x, y0, z1), (x, y1, z1), (x, y1, z0)], dtype=np.float64)


def _quad_z(z: float, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """Rectangle in the vertical plane Z = z (facing the camera)."""
    return np.array([(x0, y0, z), (x1, y0, z), (x1, y1, z), (x0, y1, z)], dtype=np.float64)


def _quad_y(y: float, x0: float, x1: float, z0: float, z1: float) -> np.ndarray:
    """Horizontal rectangle at height y (ground marks, roofs)."""
    return np.array([(x0, y, z0), (x1, y, z0), (x1, y, z1), (x0, y, z1)], dtype=np.float64)


def _ellipse_z(z: float, cx: float, cy: float, rx: float, ry: float, count: int = 16) -> np.ndarray:
    """Ellipse in the plane Z = z as an (count, 3) polygon."""
    angles = np.linspace(0.0, 2 * math.pi, count, endpoint=False)
    return np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles), np.full(count, z)], axis=1)


def _stroke_z(z: float, start: tuple[float, float], end: tuple[float, float], width: float) -> np.ndarray:
    """A thick segment from (x, y) start to end in the plane Z = z (limbs, bicycle frames)."""
    direction = np.array([end[0] - start[0], end[1] - start[1]])
    normal = np.array([-direction[1], direction[0]]) / max(float(np.hypot(*direction)), 1e-9) * width / 2
    corners = [np.add(start, normal), np.add(end, normal), np.subtract(end, normal), np.subtract(start, normal)]
    return np.array([(c[0], c[1], z) for c in corners], dtype=np.float64)


# ------------------------------------------------------------------------------------------------------------
# Street layout
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Road:
    """Cross-section of the street in metres, X to the right of the camera: lanes, sidewalks, verges."""

    left: float  # X of the left road edge (negative)
    lane_width: float
    num_lanes: int
    ego_lane: int  # the camera's lane, counted from the left
    sidewalks: tuple[float, float]  # widths, (left, right)
    verges: tuple[float, float]  # terrain between sidewalk and backdrop, (left, right)

    @property
    def right(self) -> float:
        """X of the right road edge."""
        return self.left + self.num_lanes * self.lane_width

    def lane_centre(self, lane: int) -> float:
        """X of a lane's centre line."""
        return self.left + (lane + 0.5) * self.lane_width

    def lane_lines(self) -> list[float]:
        """X of the dashed lines between lanes."""
        return [self.left + i * self.lane_width for i in range(1, self.num_lanes)]

    def edge(self, side: int) -> float:
        """X of the road edge on a side (-1 left, +1 right)."""
        return self.right if side > 0 else self.left

    def sidewalk_outer(self, side: int) -> float:
        """X of the outer sidewalk edge on a side."""
        return self.edge(side) + side * self.sidewalks[side > 0]

    def backdrop(self, side: int) -> float:
        """X of the building line on a side."""
        return self.sidewalk_outer(side) + side * self.verges[side > 0]


def _sample_road(rng: np.random.Generator) -> _Road:
    """Lanes (2-4, camera in one of the two right-hand lanes), sidewalks and verges."""
    num_lanes = int(rng.integers(2, 5))
    lane_width = float(rng.uniform(3.1, 3.7))
    ego_lane = num_lanes - 1 - int(rng.integers(0, 2 if num_lanes > 2 else 1))
    offset = float(rng.uniform(-0.3, 0.3))
    sidewalks = (float(rng.uniform(1.8, 4.5)), float(rng.uniform(1.8, 4.5)))
    verges = (_verge(rng), _verge(rng))
    left = -(ego_lane + 0.5) * lane_width + offset
    return _Road(left, lane_width, num_lanes, ego_lane, sidewalks, verges)


def _verge(rng: np.random.Generator) -> float:
    """Width of a terrain strip beside a sidewalk (none 60 % of the time)."""
    return float(rng.uniform(1.0, 4.0)) if rng.random() < 0.4 else 0.0


@dataclass(frozen=True)
class _World:
    """Everything about one seed's street that does not depend on the frame or the resolution."""

    camera: _Camera
    road: _Road
    look: _Look
    material_params: np.ndarray  # (11, num_materials) float32, see _MaterialTable.params
    classes: np.ndarray  # (num_materials,) uint8
    anomaly_flags: np.ndarray  # (num_materials,) uint8
    clouds: tuple[np.ndarray, ...]  # normalised (n, 2) polygons (at infinity: fixed on screen)
    ground_strips: tuple[tuple[float, float, int], ...]  # (x0, x1, material), drawn from the camera on
    ground_marks: tuple[_QuadBatch, ...]  # dashes, joints, crossings, shadows: fixed in the world
    backdrop: tuple[_Thing, ...]  # buildings and vegetation along the building lines, far to near
    boundaries: tuple[_Thing, ...]  # walls and fences at the sidewalks' outer edges, far to near
    street: tuple[_Thing, ...]  # everything standing on road and sidewalks, far to near
    anomalies: tuple[_AnomalyObject, ...]  # the sequence obstacle, if any, first
    gain: np.ndarray  # (3,) float32 per-channel lighting
    mottle_grid: np.ndarray  # _MOTTLE_GRID float32
    light_grid: np.ndarray  # _LIGHT_GRID float32
    void_border: int


def _build_world(seed: int, config: SceneConfig, travel: float, obstacle_z: float | None) -> _World:
    """Sample a street for `seed` long enough for a camera driving `travel` metres (0 for a single scene)."""
    layout, traffic, anomaly_rng = (_stream(seed, s) for s in (_LAYOUT_STREAM, _TRAFFIC_STREAM, _ANOMALY_STREAM))
    table = _MaterialTable()
    look = _make_look(table, layout)
    camera = _Camera(horizon=float(layout.uniform(0.40, 0.47)), centre=float(layout.uniform(0.46, 0.54)))
    road = _sample_road(layout)
    clouds = _sample_clouds(layout, camera.horizon)
    backdrop = _backdrop(layout, table, road, -40.0, _GROUND_FAR + travel)
    boundaries = _boundaries(layout, table, road, travel)
    furniture = _furniture(layout, table, look, road, travel)
    marks = _ground_marks(layout, look, road, travel)
    anomalies = _place_anomalies(anomaly_rng, table, config, road, travel, obstacle_z, furniture)
    vehicles, shadows = _vehicles(traffic, table, look, config, road, anomalies, travel)
    people = _people(traffic, table, config, road, anomalies, vehicles, travel)
    street = furniture + [thing for thing, _ in vehicles] + people + [_thing([a]) for a in anomalies]
    fields = _stream(seed, _FIELD_STREAM)
    return _World(
        camera=camera,
        road=road,
        look=look,
        material_params=table.params(config.texture_noise),
        classes=table.classes(),
        anomaly_flags=table.anomaly_flags(),
        clouds=clouds,
        ground_strips=_ground_strips(layout, look, road),
        ground_marks=(*marks, *shadows),
        backdrop=_far_to_near(backdrop),
        boundaries=_far_to_near(boundaries),
        street=_far_to_near(street),
        anomalies=tuple(anomalies),
        gain=_lighting(layout),
        mottle_grid=fields.standard_normal(_MOTTLE_GRID).astype(np.float32),
        light_grid=fields.standard_normal(_LIGHT_GRID).astype(np.float32),
        void_border=config.void_border,
    )


def _stream(seed: int, stream: int, *extra: int) -> np.random.Generator:
    """An independent generator for one purpose, so adding draws to one stream never shifts another."""
    return np.random.default_rng([int(seed), stream, *extra])


def _lighting(rng: np.random.Generator) -> np.ndarray:
    """Per-channel gain: overall brightness times a slight colour tint."""
    brightness = rng.uniform(0.8, 1.15)
    return (brightness * (1.0 + rng.uniform(-0.05, 0.05, 3))).astype(np.float32)


def _sample_clouds(rng: np.random.Generator, horizon: float) -> tuple[np.ndarray, ...]:
    """0-4 clouds, each a few overlapping ellipses, in normalised image coordinates above the horizon."""
    ellipses = []
    for _ in range(int(rng.integers(0, 5))):
        cx, cy = rng.uniform(0.0, 1.0), rng.uniform(0.04, horizon * 0.6)
        for _ in range(int(rng.integers(2, 6))):
            ex, ey = cx + rng.uniform(-0.06, 0.06), cy + rng.uniform(-0.02, 0.02)
            rx, ry = rng.uniform(0.02, 0.07), rng.uniform(0.01, 0.03)
            angles = np.linspace(0.0, 2 * math.pi, 20, endpoint=False)
            ellipses.append(np.stack([ex + rx * np.cos(angles), ey + ry * np.sin(angles)], axis=1))
    return tuple(ellipses)


def _ground_strips(rng: np.random.Generator, look: _Look, road: _Road) -> tuple[tuple[float, float, int], ...]:
    """Sidewalks, curbs, road and (sometimes) solid edge lines, as lateral strips running to the horizon."""
    strips = []
    for side in (-1, 1):
        edge, outer = road.edge(side), road.sidewalk_outer(side)
        strips.append((min(edge, outer), max(edge, outer), look.sidewalk))
        strips.append((min(edge, edge + side * 0.25), max(edge, edge + side * 0.25), look.curb))
    strips.append((road.left, road.right, look.road))
    if rng.random() < 0.6:
        for side in (-1, 1):
            inner = road.edge(side) - side * 0.3
            strips.append((min(inner, inner + side * 0.15), max(inner, inner + side * 0.15), look.marking))
    return tuple(strips)


def _ground_marks(rng: np.random.Generator, look: _Look, road: _Road, travel: float) -> list[_QuadBatch]:
    """Lane dashes, sidewalk joints and sometimes a zebra crossing, fixed in the world so they move past."""
    period = rng.uniform(8.0, 12.0)
    dash = rng.uniform(2.5, 3.5)
    phase = rng.uniform(0.0, period)
    starts = np.arange(-period - phase, _MARKING_FAR + travel, period)
    dashes = [_quad_y(0.0, x - 0.07, x + 0.07, z, z + dash) for x in road.lane_lines() for z in starts]
    marks = [_QuadBatch(np.array(dashes), look.marking)] if dashes else []
    for side in (-1, 1):
        edge, outer = road.edge(side) + side * 0.25, road.sidewalk_outer(side)
        spacing = rng.uniform(1.5, 2.5)
        zs = np.arange(-rng.uniform(0, spacing), 100.0 + travel, spacing)
        joints = [_quad_y(0.0, min(edge, outer), max(edge, outer), z, z + 0.06) for z in zs]
        marks.append(_QuadBatch(np.array(joints), look.joint))
    if rng.random() < 0.3:
        z = rng.uniform(15.0, 45.0)
        xs = np.arange(road.left + 0.3, road.right - 0.6, 1.0)
        marks.append(_QuadBatch(np.array([_quad_y(0.0, x, x + 0.5, z, z + 3.0) for x in xs]), look.marking))
    return marks


# ------------------------------------------------------------------------------------------------------------
# Backdrop: buildings and vegetation along the building lines
# ------------------------------------------------------------------------------------------------------------
@dataclass
class _Segment:
    """A stretch of one side's building line: "building", "vegetation" or "gap", from z0 to z1 metres."""

    kind: str
    z0: float
    z1: float


def _backdrop(
    rng: np.random.Generator, table: _MaterialTable, road: _Road, z_start: float, z_end: float
) -> list[_Thing]:
    """Segments of buildings, vegetation and gaps on both sides, with a building and vegetation near the camera."""
    plans = [_backdrop_plan(rng, z_start, z_end) for _ in (-1, 1)]
    # Building on the left, vegetation on the right, then the building again in case vegetation replaced it.
    _ensure_near(plans, "building", 0)
    _ensure_near(plans, "vegetation", 1)
    _ensure_near(plans, "building", 0)
    things = []
    for side, plan in zip((-1, 1), plans):
        x = road.backdrop(side)
        for segment in plan:
            if segment.kind == "building":
                things.append(_building(rng, table, side, x, segment.z0, segment.z1))
            elif segment.kind == "vegetation":
                things.append(_vegetation_wall(rng, table, side, x, segment.z0, segment.z1))
    return things


def _backdrop_plan(rng: np.random.Generator, z_start: float, z_end: float) -> list[_Segment]:
    """Segments along one side; far segments are longer (they shrink on screen)."""
    plan = []
    z = z_start
    kinds = ("building", "vegetation", "gap")
    while z < z_end:
        length = rng.uniform(10.0, 35.0) * max(1.0, z / 80.0)
        plan.append(_Segment(kinds[int(rng.choice(3, p=(0.62, 0.28, 0.10)))], z, z + length))
        z += length + (rng.uniform(0.0, 6.0) if rng.random() < 0.3 else 0.0)
    return plan


def _ensure_near(plans: list[list[_Segment]], kind: str, side_index: int, z: float = 20.0) -> None:
    """Make sure `kind` appears within sight (about 5-60 m ahead); else turn the segment at `z` into it."""
    if any(seg.kind == kind and seg.z0 < 60.0 and seg.z1 > 5.0 for plan in plans for seg in plan):
        return
    for seg in plans[side_index]:
        if seg.z0 <= z < seg.z1:
            seg.kind = kind
            return


def _building(rng: np.random.Generator, table: _MaterialTable, side: int, x: float, z0: float, z1: float) -> _Thing:
    """A building block: facade along the road, its end wall facing the camera, and windows."""
    height = rng.uniform(7.0, 26.0)
    rgb = _pick(rng, _FACADE_COLOURS, 15)
    facade = table.add(_Material(_BUILDING, rgb, 4.0, (5, 5, 5), 0.1, (-20, -20, -20)))
    end = table.add(_Material(_BUILDING, _scaled(rgb, 0.72), 4.0, (5, 5, 5), 0.1))
    windows = table.add(_Material(_BUILDING, _pick(rng, _WINDOW_COLOURS, 10), 3.0, (6, 6, 6), 0.06))
    depth = 14.0
    parts: list[_Part] = [
        _poly(end, _quad_z(z0, x, x + side * depth, 0.0, height)),
        _poly(facade, _quad_x(x, 0.0, height, z0, z1)),
    ]
    quads = _window_quads(rng, x, height, z0, z1)
    if len(quads):
        parts.append(_QuadBatch(quads, windows))
    return _thing(parts)


def _window_quads(rng: np.random.Generator, x: float, height: float, z0: float, z1: float) -> np.ndarray:
    """(n, 4, 3) window rectangles on a facade: a grid of floors and bays (none on far buildings)."""
    if z0 > 220.0:
        return np.zeros((0, 4, 3))
    floor, bay = rng.uniform(2.9, 3.6), rng.uniform(2.4, 3.6)
    win_h, win_w = rng.uniform(1.1, 1.7), rng.uniform(0.9, min(1.6, bay - 0.6))
    ys = np.arange(1.0, height - win_h - 0.8, floor)
    zs = np.arange(z0 + 1.0, z1 - win_w - 0.8, bay)
    if not (len(ys) and len(zs)):
        return np.zeros((0, 4, 3))
    y, z = (a.ravel() for a in np.meshgrid(ys, zs, indexing="ij"))
    corners = [(y, z), (y, z + win_w), (y + win_h, z + win_w), (y + win_h, z)]
    return np.stack([np.stack([np.full_like(y, x), cy, cz], axis=1) for cy, cz in corners], axis=1)


def _vegetation_wall(
    rng: np.random.Generator, table: _MaterialTable, side: int, x: float, z0: float, z1: float
) -> _Thing:
    """A hedge or line of trees along the building line, with a bumpy top."""
    tall = rng.random() < 0.6
    base = rng.uniform(6.0, 14.0) if tall else rng.uniform(1.5, 3.0)
    count = max(4, int((z1 - z0) / 2.5))
    zs = np.linspace(z1, z0, count)
    tops = base + rng.uniform(-0.2, 0.2, count) * base
    x_line = x + side * rng.uniform(0.0, 2.0)
    outline = [(x_line, 0.0, z0), (x_line, 0.0, z1)] + [(x_line, float(t), float(z)) for t, z in zip(tops, zs)]
    material = table.add(_Material(_VEGETATION, _jitter(rng, (58, 100, 42), 14), 12.0, (16, 28, 12), 0.15))
    return _thing([_poly(material, np.array(outline))])


def _boundaries(rng: np.random.Generator, table: _MaterialTable, road: _Road, travel: float) -> list[_Thing]:
    """Sometimes a wall or a fence along a sidewalk's outer edge."""
    things = []
    for side in (-1, 1):
        if rng.random() >= 0.35:
            continue
        x = road.sidewalk_outer(side)
        z0 = rng.uniform(-10.0, 40.0)
        z1 = z0 + rng.uniform(15.0, 60.0) + travel
        if rng.random() < 0.5:
            things.append(_wall(rng, table, x, z0, z1))
        else:
            things.append(_fence(rng, table, x, z0, z1))
    return things


def _wall(rng: np.random.Generator, table: _MaterialTable, x: float, z0: float, z1: float) -> _Thing:
    """A low concrete wall."""
    material = table.add(_Material(_WALL, _jitter(rng, (150, 146, 138), 15), 5.0, (8, 8, 8), 0.08))
    return _thing([_poly(material, _quad_x(x, 0.0, rng.uniform(0.8, 2.0), z0, z1))])


def _fence(rng: np.random.Generator, table: _MaterialTable, x: float, z0: float, z1: float) -> _Thing:
    """A fence: two rails and vertical bars (the background shows between the bars)."""
    rgb = (_jitter(rng, (110, 95, 75), 12), _jitter(rng, (148, 152, 156), 10))[int(rng.integers(2))]
    material = table.add(_Material(_FENCE, rgb, 4.0, (4, 4, 4), 0.06))
    height = rng.uniform(1.0, 2.0)
    bars = np.arange(z0, z1, 0.35)
    quads = np.array([_quad_x(x, 0.0, height, z, z + 0.06) for z in bars])
    rails = [_poly(material, _quad_x(x, y, y + 0.07, z0, z1)) for y in (0.25, height - 0.07)]
    return _thing([_QuadBatch(quads, material), *rails])


# ------------------------------------------------------------------------------------------------------------
# Street furniture: poles, signs, traffic lights, trees
# ------------------------------------------------------------------------------------------------------------
def _furniture(
    rng: np.random.Generator, table: _MaterialTable, look: _Look, road: _Road, travel: float
) -> list[_Thing]:
    """Poles near the curb (lamps, signs, traffic lights) and sometimes a row of trees, on both sides."""
    things = []
    z_end = _OBJECT_FAR + travel
    for side in (-1, 1):
        x = road.edge(side) + side * 0.5
        for z in _spaced(rng, rng.uniform(3.0, 20.0), z_end, 18.0, 40.0):
            kind = rng.choice(3, p=(0.6, 0.25, 0.15))
            build = (_lamp, _sign, _traffic_light)[int(kind)]
            things.append(build(rng, look, side, x, z))
        if rng.random() < 0.55:
            x_tree = road.sidewalk_outer(side) - side * min(0.9, road.sidewalks[side > 0] / 3)
            for z in _spaced(rng, rng.uniform(4.0, 15.0), z_end, 8.0, 16.0):
                things.append(_tree(rng, table, x_tree, z))
    return things


def _spaced(rng: np.random.Generator, start: float, end: float, low: float, high: float) -> list[float]:
    """Positions from start to end with random gaps in [low, high]."""
    positions = []
    z = start
    while z < end:
        positions.append(float(z))
        z += rng.uniform(low, high)
    return positions


def _lamp(rng: np.random.Generator, look: _Look, side: int, x: float, z: float) -> _Thing:
    """A street lamp: pole, arm over the road, lamp head."""
    height = rng.uniform(6.0, 9.0)
    reach = rng.uniform(1.0, 2.2)
    arm_end = (x - side * reach, height + 0.2)
    return _thing(
        [
            _poly(look.pole, _quad_z(z, x - 0.09, x + 0.09, 0.0, height)),
            _poly(look.pole, _stroke_z(z, (x, height - 0.1), arm_end, 0.1)),
            _poly(look.pole, _quad_z(z, arm_end[0] - 0.3, arm_end[0] + 0.3, arm_end[1] - 0.2, arm_end[1])),
        ]
    )


def _sign(rng: np.random.Generator, look: _Look, side: int, x: float, z: float) -> _Thing:
    """A traffic sign on a short pole: a round, triangular, square or diamond plate with a border."""
    height = rng.uniform(2.6, 3.4)
    centre = height - 0.35
    outline = _sign_outline(int(rng.integers(4)), x, centre, 0.33)
    colour = look.signs[int(rng.integers(len(look.signs)))]
    border, face = (colour, look.sign_white) if rng.random() < 0.5 else (look.sign_white, colour)
    inner = np.column_stack([x + 0.75 * (outline[:, 0] - x), centre + 0.75 * (outline[:, 1] - centre)])
    plate_z = z - 0.05
    return _thing(
        [
            _poly(look.pole, _quad_z(z, x - 0.05, x + 0.05, 0.0, height)),
            _poly(border, np.column_stack([outline, np.full(len(outline), plate_z)])),
            _poly(face, np.column_stack([inner, np.full(len(inner), plate_z)])),
        ]
    )


def _sign_outline(kind: int, cx: float, cy: float, radius: float) -> np.ndarray:
    """(n, 2) outline of a sign plate: 0 round, 1 triangle, 2 square, 3 diamond."""
    count, start = ((20, 0.0), (3, math.pi / 2), (4, math.pi / 4), (4, 0.0))[kind]
    angles = start + np.linspace(0.0, 2 * math.pi, count, endpoint=False)
    return np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)


def _traffic_light(rng: np.random.Generator, look: _Look, side: int, x: float, z: float) -> _Thing:
    """A traffic light: pole, dark housing and three lamps, one of them lit."""
    height = rng.uniform(3.6, 4.6)
    lit = int(rng.integers(3))
    parts = [
        _poly(look.pole, _quad_z(z, x - 0.07, x + 0.07, 0.0, height - 1.0)),
        _poly(look.light_housing, _quad_z(z - 0.05, x - 0.18, x + 0.18, height - 1.05, height)),
    ]
    for i in range(3):
        material = look.lamps_on[i] if i == lit else look.lamp_off
        parts.append(_poly(material, _ellipse_z(z - 0.1, x, height - 0.2 - 0.32 * i, 0.11, 0.11, 12)))
    return _thing(parts)


def _tree(rng: np.random.Generator, table: _MaterialTable, x: float, z: float) -> _Thing:
    """A street tree: trunk and a bumpy round canopy (both vegetation, as in Cityscapes)."""
    trunk_height = rng.uniform(2.0, 3.5)
    radius = rng.uniform(1.3, 2.8)
    trunk = table.add(_Material(_VEGETATION, _jitter(rng, (80, 64, 45), 10), 6.0, (6, 6, 6), 0.1))
    leaves = table.add(_Material(_VEGETATION, _jitter(rng, (60, 104, 40), 15), 12.0, (16, 28, 12), 0.15))
    canopy = _ellipse_z(z - 0.05, x, trunk_height + 0.7 * radius, radius, radius * 0.9, 18)
    wobble = 1.0 + rng.uniform(-0.15, 0.15, (len(canopy), 1))
    centre = np.array([x, trunk_height + 0.7 * radius, z - 0.05])
    canopy = centre + (canopy - centre) * wobble
    return _thing([_poly(trunk, _quad_z(z, x - 0.15, x + 0.15, 0.0, trunk_height + 0.5)), _poly(leaves, canopy)])


@dataclass(frozen=True)
class _Footprint:
    """Ground rectangle (metres) and height of an object, to keep objects apart and anomalies in sight."""

    x0: float
    x1: float
    z0: float
    z1: float
    height: float

    def overlaps(self, other: _Footprint, lateral: float, depth: float) -> bool:
        """Whether the two rectangles come within `lateral` across and `depth` along the road."""
        return (
            self.x0 - lateral < other.x1
            and other.x0 - lateral < self.x1
            and self.z0 - depth < other.z1
            and other.z0 - depth < self.z1
        )

    def screen_box(self) -> tuple[float, float, float, float]:
        """Approximate (left, top, right, bottom) on screen from the starting camera, in focal-length units."""
        zs = (max(self.z0, _NEAR), max(self.z1, _NEAR))
        xs = [_LATERAL_SCALE * x / z for x in (self.x0, self.x1) for z in zs]
        tops = [(_CAMERA_HEIGHT - self.height) / z for z in zs]
        return min(xs), min(tops), max(xs), _CAMERA_HEIGHT / zs[0]

    def meets_on_screen(self, other: _Footprint, margin: float = 0.01) -> bool:
        """Whether the two objects' screen boxes overlap (one may hide the other)."""
        a, b = self.screen_box(), other.screen_box()
        return a[0] - margin < b[2] and b[0] - margin < a[2] and a[1] - margin < b[3] and b[1] - margin < a[3]


def _thing_footprint(thing: _Thing) -> _Footprint:
    """Bounding footprint and height of a thing made of polygons."""
    points = np.concatenate(
        [c for part in thing.parts if isinstance(part, _Polygon) for c in part.contours]
        + [part.quads.reshape(-1, 3) for part in thing.parts if isinstance(part, _QuadBatch)]
    )
    low, high = points.min(axis=0), points.max(axis=0)
    return _Footprint(float(low[0]), float(high[0]), float(low[2]), float(high[2]), float(high[1]))


def _blocks_anomalies(footprint: _Footprint, anomalies: list[_AnomalyObject], travel: float) -> bool:
    """Whether an object would stand on an anomaly, hide one from the camera, or block a sequence's path."""
    for anomaly in anomalies:
        other = anomaly.footprint()
        if footprint.overlaps(other, 0.5, 2.0):
            return True
        if footprint.z0 < anomaly.z and footprint.meets_on_screen(other):
            return True
    in_path = footprint.x0 < 1.2 and footprint.x1 > -1.2
    return travel > 0 and in_path and footprint.z0 < travel + 8.0


# ------------------------------------------------------------------------------------------------------------
# Anomalies
# ------------------------------------------------------------------------------------------------------------
def _place_anomalies(
    rng: np.random.Generator,
    table: _MaterialTable,
    config: SceneConfig,
    road: _Road,
    travel: float,
    obstacle_z: float | None,
    furniture: list[_Thing],
) -> list[_AnomalyObject]:
    """Anomalies mostly on the road (the sequence obstacle first, in the camera's lane), in view, not hiding each other.

    After 30 tries to find a free spot an anomaly is placed anyway, so the count is always `num_anomalies`.
    """
    placed: list[_AnomalyObject] = []
    fixed = [_thing_footprint(thing) for thing in furniture if thing.near < _OBJECT_FAR]
    for index in range(config.num_anomalies):
        appearance = _random_appearance(rng, config.anomaly_family)
        low, high = config.anomaly_size
        is_obstacle = index == 0 and obstacle_z is not None
        height = rng.uniform((low + high) / 2 if is_obstacle else low, high)  # the obstacle: upper half of the range
        width = float(np.clip(height * rng.uniform(0.6, 1.8), 0.25, 3.0))
        for _ in range(30):
            if is_obstacle:
                x, z = road.lane_centre(road.ego_lane) + rng.uniform(-0.5, 0.5), obstacle_z
            else:
                x, z = _anomaly_spot(rng, config, road, width, travel)
            spot = _Footprint(x - width / 2, x + width / 2, z, z + 0.05, height)
            others = [other.footprint() for other in placed]
            clash = any(spot.overlaps(other, 0.3, 1.0) or spot.meets_on_screen(other) for other in others)
            hidden = any(spot.overlaps(f, 0.2, 0.5) or (f.z0 < z and spot.meets_on_screen(f, 0.0)) for f in fixed)
            if not (clash or hidden):
                break
        material = table.add(_Material(IGNORE_ID, (0.0, 0.0, 0.0), 3.0, (0, 0, 0), 0.05, is_anomaly=True))
        placed.append(_AnomalyObject(float(x), float(z), width, float(height), appearance, material))
    return placed


def _anomaly_spot(
    rng: np.random.Generator, config: SceneConfig, road: _Road, width: float, travel: float
) -> tuple[float, float]:
    """Ground position (x, z) for an anomaly: on the road with probability `anomaly_on_road`, else a sidewalk.

    It is at least 8 m ahead and far enough for its lateral offset to stay inside the image.
    """
    if rng.random() < config.anomaly_on_road:
        margin = width / 2 + 0.2
        x = rng.uniform(road.left + margin, max(road.right - margin, road.left + margin + 0.01))
    else:
        side = -1 if rng.random() < 0.5 else 1
        inner, outer = road.edge(side) + side * 0.4, road.sidewalk_outer(side) - side * 0.2
        x = rng.uniform(min(inner, outer), max(inner, outer))
    nearest = max(8.0, 2.2 * (abs(x) + width / 2))
    return x, rng.uniform(nearest, nearest + 32.0) + rng.uniform(0.0, travel)


def _random_appearance(rng: np.random.Generator, family: str) -> _Appearance:
    """A shape and a texture drawn from one family's kinds."""
    shapes, textures = ANOMALY_SHAPES[family], ANOMALY_TEXTURES[family]
    shape = shapes[int(rng.integers(len(shapes)))]
    faces = _shape_faces(shape, rng)
    texture = _sample_texture(textures[int(rng.integers(len(textures)))], rng)
    return _Appearance(shape, faces, texture)


def _circle(count: int, cx: float = 0.0, cy: float = 0.0, radius: float = 1.0) -> np.ndarray:
    """(count, 2) circle polygon."""
    angles = np.linspace(0.0, 2 * math.pi, count, endpoint=False)
    return np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)


def _fit_unit_box(points: np.ndarray) -> np.ndarray:
    """Scale and shift a polygon so that its bounding box is exactly [-1, 1]^2."""
    low, high = points.min(axis=0), points.max(axis=0)
    return (points - (low + high) / 2) / np.maximum((high - low) / 2, 1e-9)


def _shape_faces(shape: str, rng: np.random.Generator) -> tuple[tuple[np.ndarray, float], ...]:
    """Faces of a shape kind in the unit box, drawn in order; brightness 0 cuts a hole."""
    if shape == "ellipse":
        return ((_circle(40), 1.0),)
    if shape == "box":
        return _box_faces(rng)
    if shape == "cylinder":
        return _cylinder_faces(rng)
    if shape == "star":
        return ((_star(rng), 1.0),)
    if shape == "ring":
        inner = rng.uniform(0.45, 0.7)
        return ((_circle(40), 1.0), (_circle(32, rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1), inner), 0.0))
    if shape == "irregular":
        count = int(rng.integers(7, 13))
        angles = np.sort(rng.uniform(0.0, 2 * math.pi, count))
        radii = rng.uniform(0.35, 1.0, count)
        return ((_fit_unit_box(np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)), 1.0),)
    if shape == "crescent":
        dx = rng.uniform(0.35, 0.6) * (1 if rng.random() < 0.5 else -1)
        return ((_circle(40), 1.0), (_circle(40, dx, rng.uniform(-0.3, 0.3), rng.uniform(0.75, 0.95)), 0.0))
    raise ValueError(f"unknown anomaly shape {shape!r}")


def _box_faces(rng: np.random.Generator) -> tuple[tuple[np.ndarray, float], ...]:
    """A crate seen slightly from above and aside: front, top (lighter) and side (darker) faces."""
    d = 2 * rng.uniform(0.2, 0.4)
    front = np.array([(-1, -1 + d), (1 - d, -1 + d), (1 - d, 1), (-1, 1)], dtype=np.float64)
    top = np.array([(-1, -1 + d), (-1 + d, -1), (1, -1), (1 - d, -1 + d)], dtype=np.float64)
    side = np.array([(1 - d, -1 + d), (1, -1), (1, 1 - d), (1 - d, 1)], dtype=np.float64)
    flip = np.array([-1.0 if rng.random() < 0.5 else 1.0, 1.0])
    return ((front * flip, 1.0), (top * flip, 1.2), (side * flip, 0.72))


def _cylinder_faces(rng: np.random.Generator) -> tuple[tuple[np.ndarray, float], ...]:
    """A barrel: body with a rounded bottom and a lighter elliptical top."""
    e = rng.uniform(0.12, 0.25)
    angles = np.linspace(0.0, math.pi, 20)
    bottom = np.stack([np.cos(angles), 1 - e + e * np.sin(angles)], axis=1)  # right to left along the bottom
    body = np.vstack([[(1.0, -1 + e)], bottom, [(-1.0, -1 + e)]])
    top = np.stack([np.cos(2 * angles), -1 + e + e * np.sin(2 * angles)], axis=1)
    return ((body, 0.92), (top, 1.2))


def _star(rng: np.random.Generator) -> np.ndarray:
    """A star with 5-8 points, fitted to the unit box."""
    points = int(rng.integers(5, 9))
    angles = rng.uniform(0.0, 2 * math.pi) + np.linspace(0.0, 2 * math.pi, 2 * points, endpoint=False)
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, rng.uniform(0.35, 0.6)) * rng.uniform(0.9, 1.1, 2 * points)
    return _fit_unit_box(np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1))


def _vivid_colours(rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, 3) saturated colours with well-separated hues, alternating bright and darker."""
    hue = rng.uniform(0.0, 1.0)
    colours = []
    for i in range(count):
        value = rng.uniform(0.8, 1.0) if i % 2 == 0 else rng.uniform(0.4, 0.65)
        colours.append(colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.75, 1.0), value))
        hue += rng.uniform(0.25, 0.45)
    return np.array(colours, dtype=np.float32) * 255.0


def _sample_texture(kind: str, rng: np.random.Generator) -> _Texture:
    """Colours and parameters of a texture kind."""
    colours = _vivid_colours(rng, 3)
    if kind == "stripes":
        params = {"count": float(rng.integers(3, 10)), "angle": rng.uniform(0.0, math.pi)}
    elif kind == "checker":
        params = {"cells_u": float(rng.integers(2, 7)), "cells_v": float(rng.integers(2, 7))}
    elif kind == "zigzag":
        params = {"count": float(rng.integers(3, 8)), "teeth": float(rng.integers(2, 6)), "amp": rng.uniform(0.1, 0.3)}
    elif kind == "spots":
        count = int(rng.integers(5, 17))
        params = {"spots": np.column_stack([rng.uniform(0, 1, (count, 2)), rng.uniform(0.05, 0.16, count)])}
        params["which"] = rng.integers(1, 3, count).astype(np.float64)
    elif kind == "noise":
        size = int(rng.integers(3, 8))
        weights = rng.dirichlet(np.ones(3), (size, size))
        params = {"grid": (weights @ colours + rng.normal(0, 20, (size, size, 3))).clip(0, 255)}
    elif kind == "gradient":
        params = {"angle": rng.uniform(0.0, 2 * math.pi), "radial": float(rng.random() < 0.4)}
    else:
        raise ValueError(f"unknown anomaly texture {kind!r}")
    return _Texture(kind, colours, params)


def _render_texture(texture: _Texture, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Texture colours at object coordinates u (1, w) and v (h, 1) in [0, 1] -> (h, w, 3) float32."""
    u, v = np.broadcast_arrays(u, v)
    p, colours = texture.params, texture.colours
    if texture.kind == "stripes":
        t = (u - 0.5) * math.cos(p["angle"]) + (v - 0.5) * math.sin(p["angle"])
        return colours[(np.floor(t * p["count"]).astype(np.int64) % 2)]
    if texture.kind == "checker":
        cells = np.floor(u * p["cells_u"]) + np.floor(v * p["cells_v"])
        return colours[cells.astype(np.int64) % 2]
    if texture.kind == "zigzag":
        tooth = np.abs((u * p["teeth"]) % 1.0 * 2 - 1)
        return colours[np.floor((v + p["amp"] * tooth) * p["count"]).astype(np.int64) % 2]
    if texture.kind == "spots":
        return _render_spots(texture, u, v)
    if texture.kind == "noise":
        return _bilinear(p["grid"], u, v)
    if texture.kind == "gradient":
        return _render_gradient(texture, u, v)
    raise ValueError(f"unknown anomaly texture {texture.kind!r}")


def _render_spots(texture: _Texture, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Round spots of colours 1 and 2 on colour 0."""
    index = np.zeros(u.shape, dtype=np.int64)
    for (cx, cy, radius), which in zip(texture.params["spots"], texture.params["which"]):
        index[(u - cx) ** 2 + (v - cy) ** 2 < radius**2] = int(which)
    return texture.colours[index]


def _render_gradient(texture: _Texture, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Linear (along an angle) or radial blend through the three colours."""
    if texture.params["radial"]:
        t = np.clip(np.hypot(u - 0.5, v - 0.5) * 2, 0.0, 1.0)
    else:
        angle = float(texture.params["angle"])
        t = np.clip((u - 0.5) * math.cos(angle) + (v - 0.5) * math.sin(angle) + 0.5, 0.0, 1.0)
    t2 = (t * 2)[..., None]
    c0, c1, c2 = texture.colours
    return np.where(t2 < 1.0, c0 + (c1 - c0) * t2, c1 + (c2 - c1) * (t2 - 1.0)).astype(np.float32)


def _bilinear(grid: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sample a (g, g, 3) grid at u, v in [0, 1] with bilinear interpolation (resolution independent)."""
    size = grid.shape[0] - 1
    x, y = u * size, v * size
    x0, y0 = np.minimum(np.floor(x).astype(np.int64), size - 1), np.minimum(np.floor(y).astype(np.int64), size - 1)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    top = grid[y0, x0] * (1 - fx) + grid[y0, x0 + 1] * fx
    bottom = grid[y0 + 1, x0] * (1 - fx) + grid[y0 + 1, x0 + 1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def _rasterise_faces(
    faces: tuple[tuple[np.ndarray, float], ...], box: tuple[float, float, float, float], rows: slice, cols: slice
) -> np.ndarray:
    """Draw unit-box faces scaled into `box` (pixels) on the region rows x cols -> (h, w) float32 brightness."""
    left, top, right, bottom = box
    centre = np.array([(left + right) / 2 - cols.start, (top + bottom) / 2 - rows.start])
    half = np.array([(right - left) / 2, (bottom - top) / 2])
    canvas = np.zeros((rows.stop - rows.start, cols.stop - cols.start), dtype=np.float32)
    for polygon, brightness in faces:
        points = np.round((centre + polygon * half) * _SUBPIXEL).astype(np.int32)
        cv2.fillPoly(canvas, [points], float(brightness), cv2.LINE_8, _SUBPIXEL_BITS)
    return canvas


def _texture_patch(texture: _Texture, box: tuple[float, float, float, float], rows: slice, cols: slice) -> np.ndarray:
    """Texture colours over the region rows x cols of an object whose box is `box` -> (h, w, 3) float32."""
    left, top, right, bottom = box
    u = (np.arange(cols.start, cols.stop, dtype=np.float32) - left) / max(right - left, 1e-6)
    v = (np.arange(rows.start, rows.stop, dtype=np.float32) - top) / max(bottom - top, 1e-6)
    return _render_texture(texture, np.clip(u, 0.0, 1.0)[None, :], np.clip(v, 0.0, 1.0)[:, None])


# ------------------------------------------------------------------------------------------------------------
# Traffic: vehicles, pedestrians, riders
# ------------------------------------------------------------------------------------------------------------
_VEHICLE_SIZES = {  # class: (width, length, height) ranges
    _CAR: ((1.7, 1.95), (4.0, 4.8), (1.4, 1.6)),
    _TRUCK: ((2.3, 2.5), (7.0, 9.0), (3.2, 3.8)),
    _BUS: ((2.45, 2.55), (11.0, 12.5), (3.0, 3.3)),
}


def _vehicles(
    rng: np.random.Generator,
    table: _MaterialTable,
    look: _Look,
    config: SceneConfig,
    road: _Road,
    anomalies: list[_AnomalyObject],
    travel: float,
) -> tuple[list[tuple[_Thing, _Footprint]], list[_QuadBatch]]:
    """1..max_vehicles cars (mostly), trucks and buses in lanes or parked at the curb, with their shadows."""
    if config.max_vehicles == 0:
        return [], []
    placed: list[tuple[_Thing, _Footprint]] = []
    shadows = []
    for _ in range(int(rng.integers(1, config.max_vehicles + 1))):
        class_id = (_CAR, _TRUCK, _BUS)[int(rng.choice(3, p=(0.8, 0.1, 0.1)))]
        width, length, height = (rng.uniform(*r) for r in _VEHICLE_SIZES[class_id])
        for _ in range(20):
            x, z = _vehicle_spot(rng, road, width, travel)
            footprint = _Footprint(x - width / 2, x + width / 2, z, z + length, height)
            clash = any(footprint.overlaps(other, 0.3, 2.0) for _, other in placed)
            if not clash and not _blocks_anomalies(footprint, anomalies, travel):
                break
        else:
            continue
        parts = _vehicle_parts(rng, table, look, class_id, x, z, (width, length, height))
        placed.append((_thing(parts), footprint))
        left, right = max(footprint.x0 - 0.1, road.left + 0.1), min(footprint.x1 + 0.1, road.right - 0.1)
        shadow = _quad_y(0.0, left, right, z - 0.15, z + length)  # kept on the road: it is labelled road
        shadows.append(_QuadBatch(shadow[None], look.shadow, _SHADOW_FAR))
    return placed, shadows


def _vehicle_spot(rng: np.random.Generator, road: _Road, width: float, travel: float) -> tuple[float, float]:
    """Where a vehicle's rear centre stands: in a lane, or parked along a curb (30 %)."""
    z = rng.uniform(7.0, 75.0) + rng.uniform(0.0, travel)
    if rng.random() < 0.3:
        side = -1 if rng.random() < 0.5 else 1
        return road.edge(side) - side * (width / 2 + 0.3), z
    lane = int(rng.integers(road.num_lanes))
    return road.lane_centre(lane) + rng.uniform(-0.25, 0.25), z


def _vehicle_parts(
    rng: np.random.Generator,
    table: _MaterialTable,
    look: _Look,
    class_id: int,
    x: float,
    z: float,
    size: tuple[float, float, float],
) -> list[_Part]:
    """Parts of a vehicle seen from behind: its own body colours and the scene's glass, tyres and lights."""
    palette = {_CAR: _CAR_COLOURS, _TRUCK: _TRUCK_COLOURS, _BUS: _BUS_COLOURS}[class_id]
    rgb = _pick(rng, palette, 10)
    body = table.add(_Material(class_id, rgb, 3.0, (3, 3, 3), 0.05))
    dark = table.add(_Material(class_id, _scaled(rgb, 0.78), 3.0, (3, 3, 3), 0.05))
    width, _, _ = size
    visible = x - width / 2 if x - width / 2 > 0.3 else x + width / 2 if x + width / 2 < -0.3 else None
    materials = _VehicleMaterials(body, dark, look)
    if class_id == _CAR:
        return _car_parts(materials, x, z, size, visible)
    return _big_vehicle_parts(materials, x, z, size, visible, class_id == _BUS)


@dataclass(frozen=True)
class _VehicleMaterials:
    """Material ids a vehicle is drawn with (glass, tyres and lights keep the vehicle's class)."""

    body: int
    dark: int
    look: _Look


def _car_parts(
    m: _VehicleMaterials, x: float, z: float, size: tuple[float, float, float], side_x: float | None
) -> list[_Part]:
    """A car: body, cabin with windows, roof, wheels, tail lights and plate."""
    width, length, height = size
    half, clearance, belt = width / 2, 0.22, 0.6 * height
    parts: list[_Part] = [
        _poly(m.look.tyre, _quad_z(z + 0.7, x - half + 0.1, x - half + 0.35, 0.0, clearance + 0.15)),
        _poly(m.look.tyre, _quad_z(z + 0.7, x + half - 0.35, x + half - 0.1, 0.0, clearance + 0.15)),
    ]
    if side_x is not None:
        cabin_x = x + (side_x - x) * 0.88
        parts.append(_poly(m.dark, _quad_x(side_x, clearance, belt, z, z + length)))
        cabin = [(belt, z + 0.35), (belt, z + length - 1.0), (height, z + length - 1.7), (height, z + 0.95)]
        parts.append(_poly(m.look.glass, np.array([(cabin_x, y, zz) for y, zz in cabin])))
        for wheel_z in (z + 0.8, z + length - 0.85):
            angles = np.linspace(0.0, 2 * math.pi, 14, endpoint=False)
            wheel = np.stack([np.full(14, side_x), 0.33 + 0.33 * np.sin(angles), wheel_z + 0.33 * np.cos(angles)], 1)
            parts.append(_poly(m.look.tyre, wheel))
    cabin_rear = np.array(
        [(x - 0.45 * width, belt, z + 0.35), (x + 0.45 * width, belt, z + 0.35)]
        + [(x + 0.38 * width, height, z + 0.95), (x - 0.38 * width, height, z + 0.95)]
    )
    window = cabin_rear.copy()
    window[:, 0] = x + (window[:, 0] - x) * 0.85
    window[:2, 1] += 0.06
    window[2:, 1] -= 0.06
    parts += [
        _poly(m.body, _quad_y(height, x - 0.38 * width, x + 0.38 * width, z + 0.95, z + length - 1.7)),
        _poly(m.body, _quad_y(belt, x - half, x + half, z, z + 0.35)),
        _poly(m.body, cabin_rear),
        _poly(m.look.glass, window),
        _poly(m.body, _quad_z(z, x - half, x + half, clearance, belt)),
        _poly(m.look.tail_light, _quad_z(z, x - half + 0.05, x - half + 0.35, belt - 0.22, belt - 0.06)),
        _poly(m.look.tail_light, _quad_z(z, x + half - 0.35, x + half - 0.05, belt - 0.22, belt - 0.06)),
        _poly(m.look.plate, _quad_z(z, x - 0.26, x + 0.26, clearance + 0.1, clearance + 0.25)),
    ]
    return parts


def _big_vehicle_parts(
    m: _VehicleMaterials, x: float, z: float, size: tuple[float, float, float], side_x: float | None, bus: bool
) -> list[_Part]:
    """A truck (cargo box with rear doors) or a bus (window band and rear window)."""
    width, length, height = size
    half, floor = width / 2, 0.35 if bus else 0.9
    parts: list[_Part] = [
        _poly(m.look.tyre, _quad_z(z + 1.2, x - half + 0.1, x - half + 0.5, 0.0, floor + 0.2)),
        _poly(m.look.tyre, _quad_z(z + 1.2, x + half - 0.5, x + half - 0.1, 0.0, floor + 0.2)),
    ]
    if side_x is not None:
        parts.append(_poly(m.dark, _quad_x(side_x, floor, height, z, z + length)))
        if bus:
            parts.append(_poly(m.look.glass, _quad_x(side_x, 1.25, 2.6, z + 0.4, z + length - 0.6)))
        for wheel_z in (z + 1.6, z + length - 2.2):
            angles = np.linspace(0.0, 2 * math.pi, 14, endpoint=False)
            wheel = np.stack([np.full(14, side_x), 0.5 + 0.5 * np.sin(angles), wheel_z + 0.5 * np.cos(angles)], 1)
            parts.append(_poly(m.look.tyre, wheel))
    parts.append(_poly(m.body, _quad_z(z, x - half, x + half, floor, height)))
    if bus:
        parts.append(_poly(m.look.glass, _quad_z(z, x - half + 0.2, x + half - 0.2, 1.9, height - 0.3)))
    else:
        parts.append(_poly(m.dark, _quad_z(z, x - 0.03, x + 0.03, floor + 0.1, height - 0.1)))
        parts.append(_poly(m.look.tyre, _quad_z(z, x - half + 0.2, x + half - 0.2, 0.45, 0.6)))
    parts.append(_poly(m.look.tail_light, _quad_z(z, x - half + 0.05, x - half + 0.35, floor + 0.1, floor + 0.3)))
    parts.append(_poly(m.look.tail_light, _quad_z(z, x + half - 0.35, x + half - 0.05, floor + 0.1, floor + 0.3)))
    return parts


def _people(
    rng: np.random.Generator,
    table: _MaterialTable,
    config: SceneConfig,
    road: _Road,
    anomalies: list[_AnomalyObject],
    vehicles: list[tuple[_Thing, _Footprint]],
    travel: float,
) -> list[_Thing]:
    """0..max_persons pedestrians on the sidewalks and, sometimes, a cyclist crossing the road far ahead."""
    if config.max_persons == 0:
        return []
    things = []
    for _ in range(int(rng.integers(0, config.max_persons + 1))):
        side = -1 if rng.random() < 0.5 else 1
        inner, outer = road.edge(side) + side * 0.6, road.sidewalk_outer(side) - side * 0.3
        x = rng.uniform(min(inner, outer), max(inner, outer))
        z = rng.uniform(6.0, 60.0) + rng.uniform(0.0, travel)
        if _blocks_anomalies(_Footprint(x - 0.3, x + 0.3, z, z + 0.3, 1.95), anomalies, travel):
            continue
        things.append(_person(rng, table, _PERSON, x, z, rng.uniform(1.55, 1.95)))
    if rng.random() < 0.35:
        things.extend(_crossing_rider(rng, table, road, anomalies, vehicles, travel))
    return things


def _clothing(rng: np.random.Generator, table: _MaterialTable, class_id: int) -> tuple[int, int, int, int]:
    """Material ids (skin, hair, top, bottom) of one person or rider."""
    return (
        table.add(_Material(class_id, _pick(rng, _SKIN_COLOURS, 10), 3.0, (3, 3, 3), 0.05)),
        table.add(_Material(class_id, _pick(rng, _HAIR_COLOURS, 8), 3.0, (3, 3, 3), 0.05)),
        table.add(_Material(class_id, _pick(rng, _CLOTHES_COLOURS, 20), 4.0, (5, 5, 5), 0.06)),
        table.add(_Material(class_id, _pick(rng, _CLOTHES_COLOURS[:4], 12), 4.0, (5, 5, 5), 0.06)),
    )


def _person(rng: np.random.Generator, table: _MaterialTable, class_id: int, x: float, z: float, h: float) -> _Thing:
    """A walking person facing toward or away from the camera: legs, torso, arms, head, hair."""
    skin, hair, top, bottom = _clothing(rng, table, class_id)
    stride, swing = rng.uniform(-0.12, 0.12) * h, rng.uniform(-0.06, 0.06) * h
    parts = [
        _poly(bottom, _stroke_z(z, (x - 0.05 * h, 0.5 * h), (x - 0.05 * h - stride / 2, 0.0), 0.085 * h)),
        _poly(bottom, _stroke_z(z, (x + 0.05 * h, 0.5 * h), (x + 0.05 * h + stride / 2, 0.0), 0.085 * h)),
        _poly(
            top,
            np.array(
                [(x - 0.11 * h, 0.47 * h, z), (x + 0.11 * h, 0.47 * h, z)]
                + [(x + 0.13 * h, 0.8 * h, z), (x - 0.13 * h, 0.8 * h, z)]
            ),
        ),  # fmt: skip
        _poly(top, _stroke_z(z, (x - 0.145 * h, 0.79 * h), (x - 0.17 * h - swing, 0.49 * h), 0.055 * h)),
        _poly(top, _stroke_z(z, (x + 0.145 * h, 0.79 * h), (x + 0.17 * h + swing, 0.49 * h), 0.055 * h)),
        _poly(skin, _stroke_z(z, (x, 0.79 * h), (x, 0.86 * h), 0.05 * h)),
        _poly(skin, _ellipse_z(z, x, 0.905 * h, 0.062 * h, 0.075 * h, 14)),
        _poly(hair, _ellipse_z(z, x, 0.94 * h, 0.066 * h, 0.045 * h, 14)),
    ]
    return _thing(parts)


def _crossing_rider(
    rng: np.random.Generator,
    table: _MaterialTable,
    road: _Road,
    anomalies: list[_AnomalyObject],
    vehicles: list[tuple[_Thing, _Footprint]],
    travel: float,
) -> list[_Thing]:
    """A cyclist crossing the road (side view), placed where it hides no anomaly and meets no vehicle."""
    x = rng.uniform(road.left + 1.0, road.right - 1.0)
    z = rng.uniform(25.0, 70.0) + rng.uniform(0.0, travel)
    footprint = _Footprint(x - 1.0, x + 1.0, z - 0.3, z + 0.3, 1.8)
    if _blocks_anomalies(footprint, anomalies, travel) or any(footprint.overlaps(f, 0.3, 1.5) for _, f in vehicles):
        return []
    direction = 1.0 if rng.random() < 0.5 else -1.0
    bike = table.add(_Material(_BICYCLE, _pick(rng, _CLOTHES_COLOURS, 15), 3.0, (3, 3, 3), 0.05))
    skin, hair, top, bottom = _clothing(rng, table, _RIDER)

    def at(dx: float, y: float) -> tuple[float, float]:
        return x + direction * dx, y

    hubs, crank, seat, bar = (at(-0.52, 0.34), at(0.52, 0.34)), at(-0.05, 0.32), at(-0.15, 0.88), at(0.38, 0.92)
    parts: list[_Part] = [
        _poly(bike, _ellipse_z(z, *hub, 0.34, 0.34, 16), _ellipse_z(z, *hub, 0.28, 0.28, 16)) for hub in hubs
    ]
    for start, end in ((hubs[0], crank), (crank, seat), (seat, hubs[0]), (seat, bar), (crank, bar), (bar, hubs[1])):
        parts.append(_poly(bike, _stroke_z(z, start, end, 0.05)))
    hip, shoulder, knee, hand = at(-0.15, 0.95), at(0.08, 1.48), at(0.12, 0.72), at(0.36, 1.02)
    parts += [
        _poly(bottom, _stroke_z(z, hip, knee, 0.14)),
        _poly(bottom, _stroke_z(z, knee, at(0.0, 0.25), 0.1)),
        _poly(top, _stroke_z(z, hip, shoulder, 0.3)),
        _poly(top, _stroke_z(z, shoulder, hand, 0.08)),
        _poly(skin, _ellipse_z(z, *at(0.15, 1.64), 0.1, 0.12, 14)),
        _poly(hair, _ellipse_z(z, *at(0.13, 1.7), 0.1, 0.07, 14)),
    ]
    return [_thing(parts)]


# ------------------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Fields:
    """Resolution-dependent texture fields of a world, resized once per image size."""

    mottle: np.ndarray  # (H, W) float32 mid-frequency texture
    light: np.ndarray  # (H, W) float32 slow illumination
    rows: np.ndarray  # (H, 1) float32 normalised row position


def _fields(world: _World, height: int, width: int) -> _Fields:
    """Resize the world's texture grids to the image."""
    mottle = cv2.resize(world.mottle_grid, (width, height), interpolation=cv2.INTER_LINEAR)
    light = cv2.resize(world.light_grid, (width, height), interpolation=cv2.INTER_CUBIC)
    rows = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None]
    return _Fields(mottle, light, rows)


def _render(world: _World, camera_z: float, height: int, width: int, fields: _Fields, sensor_seed: list[int]) -> Scene:
    """Draw the world from a camera `camera_z` metres down the road and return the frame with its labels."""
    canvas = _Canvas(dataclasses.replace(world.camera, z=camera_z), height, width)
    _draw_sky_and_ground(canvas, world)
    for thing in (*world.backdrop, *world.boundaries, *world.street):
        if thing.visible_from(camera_z):
            for part in thing.parts:
                part.draw(canvas)
    image = _shade(world, canvas, fields, np.random.default_rng(sensor_seed))
    anomaly = world.anomaly_flags[canvas.ids]
    if world.void_border > 0:
        _mark_void_border(anomaly, world.void_border)
    return Scene(image=image, semantic=world.classes[canvas.ids], anomaly=anomaly)


def _draw_sky_and_ground(canvas: _Canvas, world: _World) -> None:
    """Clouds, terrain below the horizon, ground strips from the camera to the horizon, then ground marks."""
    for cloud in world.clouds:
        canvas.fill([canvas.to_pixels(cloud)], world.look.cloud)
    horizon = world.camera.horizon * canvas.height - 0.5
    ground = np.array([(-1.0, horizon), (canvas.width, horizon), (canvas.width, canvas.height), (-1, canvas.height)])
    canvas.fill([ground], world.look.terrain)
    z = canvas.camera.z
    for x0, x1, material in world.ground_strips:
        canvas.fill_world((_quad_y(0.0, x0, x1, z + _NEAR, z + _GROUND_FAR),), material)
    for marks in world.ground_marks:
        marks.draw(canvas)


def _shade(world: _World, canvas: _Canvas, fields: _Fields, rng: np.random.Generator) -> np.ndarray:
    """Colour each pixel from its material, the texture fields and sensor noise; paint anomalies; light the scene."""
    # Channel-first planes: numpy is slow on a trailing axis of length 3.
    ids, table = canvas.ids.astype(np.intp), world.material_params
    grain = (rng.random(ids.shape, dtype=np.float32) - np.float32(0.5)) * np.float32(math.sqrt(12.0))
    grain *= np.take(table[9], ids)
    light = np.take(table[10], ids)
    light *= fields.light
    light += 1.0
    planes = np.empty((3, *ids.shape), dtype=np.float32)
    for channel, plane in enumerate(planes):
        np.take(table[channel], ids, out=plane)
        plane += np.take(table[3 + channel], ids) * fields.rows
        plane += np.take(table[6 + channel], ids) * fields.mottle
        plane += grain
        plane *= light
    for stamp in canvas.stamps:
        _paint_stamp(planes, ids, stamp)
    planes *= world.gain[:, None, None]
    np.clip(planes, 0.0, 255.0, out=planes)
    return cv2.merge([plane.astype(np.uint8) for plane in planes])  # (H, W, 3); much faster than a transpose


def _paint_stamp(planes: np.ndarray, ids: np.ndarray, stamp: _Stamp) -> None:
    """Add an anomaly's shaded texture to (3, H, W) planes where it is still visible (nearer things may cover it)."""
    visible = ids[stamp.rows, stamp.cols] == stamp.material
    if not visible.any():
        return
    colours = _texture_patch(stamp.texture, stamp.box, stamp.rows, stamp.cols) * stamp.shading[..., None]
    planes[:, stamp.rows, stamp.cols][:, visible] += colours[visible].T


def _mark_void_border(anomaly: np.ndarray, border: int) -> None:
    """Set normal pixels within `border` pixels of an anomaly to void (255), in place."""
    objects = (anomaly == 1).astype(np.uint8)
    if not objects.any():
        return
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * border + 1, 2 * border + 1))
    ring = (cv2.dilate(objects, kernel) > 0) & (anomaly == 0)
    anomaly[ring] = IGNORE_ID


# ------------------------------------------------------------------------------------------------------------
# Public functions
# ------------------------------------------------------------------------------------------------------------
def generate_scene(seed: int, config: SceneConfig | None = None) -> Scene:
    """Render one road scene for `seed` (same seed and config: byte-identical output) with its labels."""
    _check_int("seed", seed, 0)
    config = SceneConfig() if config is None else config
    world = _build_world(int(seed), config, travel=0.0, obstacle_z=None)
    fields = _fields(world, config.height, config.width)
    return _render(world, 0.0, config.height, config.width, fields, [int(seed), _SENSOR_STREAM, 0])


class SceneSequence(SequenceABC[Scene]):
    """A camera driving toward an obstacle in its lane; frames are rendered on access, so length costs no memory.

    Frame k of N sees the same street from `camera_position(k)` metres further on: the obstacle (the first of
    `config.num_anomalies` anomalies) is `obstacle_distance(k)` metres ahead, from `config.sequence_start` down
    to `config.sequence_end`, and grows accordingly; lane dashes move past. Without anomalies it is a plain drive.
    """

    def __init__(self, seed: int, num_frames: int, config: SceneConfig | None = None) -> None:
        _check_int("seed", seed, 0)
        _check_int("num_frames", num_frames, 1)
        self.seed = int(seed)
        self.num_frames = int(num_frames)
        self.config = SceneConfig() if config is None else config
        self._travel = self.config.sequence_start - self.config.sequence_end
        obstacle_z = self.config.sequence_start if self.config.num_anomalies > 0 else None
        self._world = _build_world(self.seed, self.config, self._travel, obstacle_z)
        self._fields = _fields(self._world, self.config.height, self.config.width)

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, index: int) -> Scene:
        """Render frame `index` (negative indices count from the end)."""
        frame = self._frame_index(index)
        seed = [self.seed, _SENSOR_STREAM, frame]
        return _render(
            self._world, self.camera_position(frame), self.config.height, self.config.width, self._fields, seed
        )

    def __iter__(self) -> Iterator[Scene]:
        for frame in range(self.num_frames):
            yield self[frame]

    def camera_position(self, index: int) -> float:
        """Metres the camera has moved along the road at frame `index`."""
        frame = self._frame_index(index)
        return self._travel * frame / (self.num_frames - 1) if self.num_frames > 1 else 0.0

    def obstacle_distance(self, index: int) -> float | None:
        """Metres from the camera to the obstacle at frame `index`; None when the sequence has no anomaly."""
        if self.config.num_anomalies == 0:
            return None
        return self.config.sequence_start - self.camera_position(index)

    def _frame_index(self, index: int) -> int:
        """Validate an index and turn a negative one into a frame number."""
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"frame index must be an integer, got {type(index).__name__}")
        frame = int(index) + self.num_frames if index < 0 else int(index)
        if not 0 <= frame < self.num_frames:
            raise IndexError(f"frame index {index} out of range for a sequence of {self.num_frames} frames")
        return frame


def generate_sequence(seed: int, num_frames: int, config: SceneConfig | None = None) -> SceneSequence:
    """The frames of a drive toward an obstacle (see `SceneSequence`), rendered lazily; iterate or index it."""
    return SceneSequence(seed, num_frames, config)


def paste_anomaly(
    image: np.ndarray,
    semantic: np.ndarray,
    rng: np.random.Generator,
    family: AnomalyFamily,
    center: tuple[float, float] | None = None,
    scale: float | None = None,
    label: int = PASTED_LABEL,
) -> np.ndarray:
    """Paste one random anomaly of `family` into image (H, W, 3) uint8 and semantic (H, W) uint8, in place.

    For training's "anomaly mix" outlier pasting. `center` is (y, x) as fractions of the image height and width
    (uniform in [0.1, 0.9] if None); `scale` is the object's height as a fraction of the image height (uniform
    in [0.08, 0.35] if None), its width 0.6-1.8 times that. The object may be cut by the image border. Pasted
    pixels get `label` in `semantic`; nothing else changes. Returns the (H, W) bool mask of pasted pixels.
    """
    _check_paste_arguments(image, semantic, family, center, scale, label)
    appearance = _random_appearance(rng, family)
    aspect = rng.uniform(0.6, 1.8)
    scale = rng.uniform(0.08, 0.35) if scale is None else float(scale)
    center = (rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9)) if center is None else center
    height, width = semantic.shape
    box_height = scale * height
    box_width = box_height * aspect
    cy, cx = center[0] * height - 0.5, center[1] * width - 0.5
    box = (cx - box_width / 2, cy - box_height / 2, cx + box_width / 2, cy + box_height / 2)
    mask = np.zeros((height, width), dtype=bool)
    region = _box_region(box, height, width)
    if region is None:
        return mask
    rows, cols = region
    shading = _rasterise_faces(appearance.faces, box, rows, cols)
    inside = shading > 0
    colours = _texture_patch(appearance.texture, box, rows, cols) * shading[..., None]
    colours += rng.normal(0.0, 3.0, colours.shape).astype(np.float32)
    image[rows, cols][inside] = np.clip(colours[inside], 0.0, 255.0).astype(np.uint8)
    semantic[rows, cols][inside] = label
    mask[rows, cols] = inside
    return mask


def _check_paste_arguments(
    image: object, semantic: object, family: object, center: object, scale: float | None, label: int
) -> None:
    """Raise ValueError on any bad `paste_anomaly` argument, before anything is drawn."""
    _check_image_pair(image, semantic)
    _check_family(family)
    _check_int("label", label, 0)
    if label > 255:
        raise ValueError(f"label must fit in uint8 (0..255), got {label!r}")
    if scale is not None and not (_is_real(scale) and 0.0 < scale < math.inf):
        raise ValueError(f"scale must be a positive fraction of the image height, got {scale!r}")
    if center is not None and not (
        isinstance(center, (tuple, list, np.ndarray)) and len(center) == 2 and all(map(_is_real, center))
    ):
        raise ValueError(f"center must be (y, x) fractions of the image height and width, got {center!r}")


def _is_real(value: object) -> bool:
    """Whether `value` is a finite real number (int or float, numpy included, not bool)."""
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def colorize_semantic(semantic: np.ndarray) -> np.ndarray:
    """(H, W) trainIds -> (H, W, 3) uint8 RGB in the Cityscapes palette; 255 black, 254 (pasted) white."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(CITYSCAPES_PALETTE)] = CITYSCAPES_PALETTE
    lut[PASTED_LABEL] = 255
    return lut[semantic]
