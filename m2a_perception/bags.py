"""ROS 2 bags without ROS (the `rosbags` library): our message types, image topics, and image <-> numpy.

Bags are untrusted input: every image is checked (encoding, size limits, data length against
step * height) before an array is made from it, and errors name the bag, topic and message index.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
RESULT_TYPE = "m2a/msg/AnomalySegmentation"
INSTANCE_TYPE = "m2a/msg/AnomalyInstance"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
OUR_MESSAGES = ("AnomalyInstance", "AnomalySegmentation")  # msg/<name>.msg, in dependency order

MAX_IMAGE_SIDE = 16384  # pixels; larger width or height in a bag is refused
MAX_IMAGE_BYTES = 512 * 2**20  # refuse image payloads above this (a 4K rgb8 frame is 25 MB)

# channels of the raw encodings we read, and how to turn each into RGB
_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
# what each output encoding holds: (channels, dtype)
_OUTPUT_ENCODINGS = {"mono8": (1, np.dtype(np.uint8)), "rgb8": (3, np.dtype(np.uint8)), "32FC1": (1, np.dtype("<f4"))}


class BagError(ValueError):
    """A bag (or one of its messages) is not what the command expects."""


# ----------------------------------------------------------------------------------------------------------
# Message types
# ----------------------------------------------------------------------------------------------------------
def find_msg_dir() -> Path:
    """The folder holding our .msg files: $M2A_MSG_DIR, the source tree's msg/, or an installed share/m2a/msg."""
    candidates = []
    if os.environ.get("M2A_MSG_DIR"):
        candidates.append(Path(os.environ["M2A_MSG_DIR"]))
    candidates.append(Path(__file__).resolve().parents[1] / "msg")
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        candidates.append(Path(prefix) / "share" / "m2a" / "msg")
    for folder in candidates:
        if all((folder / f"{name}.msg").is_file() for name in OUR_MESSAGES):
            return folder
    raise FileNotFoundError(
        f"cannot find the m2a message definitions ({', '.join(n + '.msg' for n in OUR_MESSAGES)}); looked in "
        f"{[str(c) for c in candidates]}. Set M2A_MSG_DIR to the repository's msg/ folder."
    )


@functools.lru_cache(maxsize=4)
def typestore(msg_dir: Path | None = None) -> Any:
    """A rosbags type store with the ROS 2 Kilted types and our m2a/msg types registered from msg/*.msg."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    folder = find_msg_dir() if msg_dir is None else msg_dir
    types: dict[str, Any] = {}
    for name in OUR_MESSAGES:
        types.update(get_types_from_msg((folder / f"{name}.msg").read_text(encoding="utf-8"), f"m2a/msg/{name}"))
    store.register(types)
    return store


# ----------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BagImage:
    """One image message of a bag: its log time, raw CDR bytes, and the deserialised message."""

    index: int  # 0-based position among the topic's messages
    log_time_ns: int  # when the bag recorded it
    raw: bytes  # serialised (CDR) message, as stored
    msg: Any  # rosbags sensor_msgs Image or CompressedImage


def open_reader(path: str | Path) -> Any:
    """An open rosbags Reader of a ROS 2 bag folder, or BagError naming the path."""
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not path.exists():
        raise BagError(f"bag {path}: no such file or folder")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as e:  # rosbags raises its own error types; keep their message
        raise BagError(f"bag {path}: cannot open as a ROS 2 bag ({type(e).__name__}: {e})") from e
    return reader


def image_connection(reader: Any, topic: str | None, path: str | Path) -> Any:
    """The connection of `topic`, or of the bag's only Image/CompressedImage topic when `topic` is None."""
    images = [c for c in reader.connections if c.msgtype in IMAGE_TYPES]
    listing = ", ".join(f"{c.topic} ({c.msgtype})" for c in reader.connections) or "none"
    if topic is None:
        topics = sorted({c.topic for c in images})
        if len(topics) != 1:
            what = "no image topic" if not topics else f"{len(topics)} image topics"
            raise BagError(f"bag {path}: {what}; pass --topic (topics: {listing})")
        topic = topics[0]
    found = [c for c in reader.connections if c.topic == topic]
    if not found:
        raise BagError(f"bag {path}: no topic {topic!r} (topics: {listing})")
    if found[0].msgtype not in IMAGE_TYPES:
        raise BagError(f"bag {path}: topic {topic!r} is {found[0].msgtype}, expected one of {list(IMAGE_TYPES)}")
    return found[0]


def read_images(reader: Any, connection: Any, path: str | Path, start_ns: int | None = None) -> Iterator[BagImage]:
    """The topic's messages in log-time order (from `start_ns` on), deserialised; BagError names a broken one."""
    store = typestore()
    for index, (conn, log_time, raw) in enumerate(reader.messages(connections=[connection], start=start_ns)):
        try:
            msg = store.deserialize_cdr(raw, conn.msgtype)
        except Exception as e:
            raise BagError(f"bag {path}, {conn.topic} message {index}: cannot deserialise ({e})") from e
        yield BagImage(index=index, log_time_ns=int(log_time), raw=bytes(raw), msg=msg)


# ----------------------------------------------------------------------------------------------------------
# Image messages <-> numpy
# ----------------------------------------------------------------------------------------------------------
def check_image(msg: Any, where: str) -> np.ndarray:
    """Validate a raw sensor_msgs Image (encoding, sizes, data length) and return its data as (H, step) uint8."""
    encoding = str(msg.encoding)
    if encoding not in _CHANNELS:
        raise BagError(f"{where}: encoding {encoding!r} is not supported; expected one of {sorted(_CHANNELS)}")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if not (0 < height <= MAX_IMAGE_SIDE and 0 < width <= MAX_IMAGE_SIDE):
        raise BagError(f"{where}: image size {height}x{width} (HxW) outside 1..{MAX_IMAGE_SIDE} pixels a side")
    channels = _CHANNELS[encoding]
    if step < width * channels:
        raise BagError(f"{where}: step {step} < width * channels = {width} * {channels} for {encoding}")
    expected = step * height
    if expected > MAX_IMAGE_BYTES:
        raise BagError(f"{where}: {expected} bytes of image data exceeds the limit of {MAX_IMAGE_BYTES}")
    data = np.asarray(msg.data)
    if data.dtype != np.uint8 or data.ndim != 1 or data.size != expected:
        raise BagError(f"{where}: data has {data.size} bytes, expected step * height = {step} * {height} = {expected}")
    return data.reshape(height, step)


def check_compressed(msg: Any, where: str) -> np.ndarray:
    """Validate a CompressedImage's payload size and return its data as 1-D uint8 (not decoded)."""
    data = np.asarray(msg.data)
    if data.dtype != np.uint8 or data.ndim != 1 or not 0 < data.size <= MAX_IMAGE_BYTES:
        raise BagError(f"{where}: compressed image of {data.size} bytes (expected 1..{MAX_IMAGE_BYTES})")
    return data


def decode_image(msg: Any, where: str) -> np.ndarray:
    """A rosbags Image or CompressedImage -> (H, W, 3) uint8 RGB (the node's conversions); BagError if malformed.

    The array is writable (an rgb8 frame would otherwise be a read-only view of the bag's bytes).
    """
    from m2a_perception.conversions import MalformedImageError, compressed_msg_to_rgb, image_msg_to_rgb

    try:
        if msg.__msgtype__ == COMPRESSED_TYPE:
            check_compressed(msg, where)
            rgb = compressed_msg_to_rgb(msg)
        else:
            check_image(msg, where)
            rgb = image_msg_to_rgb(msg)
    except MalformedImageError as e:
        raise BagError(f"{where}: {e}") from e
    return rgb if rgb.flags.writeable else rgb.copy()


def header(stamp_ns: int, frame_id: str) -> Any:
    """A std_msgs Header from nanoseconds since the epoch and a frame id."""
    store = typestore()
    time = store.types["builtin_interfaces/msg/Time"](sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
    return store.types["std_msgs/msg/Header"](stamp=time, frame_id=frame_id)


def stamp_ns(header_msg: Any) -> int:
    """Nanoseconds since the epoch of a Header's stamp."""
    return int(header_msg.stamp.sec) * 1_000_000_000 + int(header_msg.stamp.nanosec)


def numpy_to_image(array: np.ndarray, encoding: str, header_msg: Any) -> Any:
    """(H, W) uint8 (mono8), (H, W) float32 (32FC1) or (H, W, 3) uint8 (rgb8) -> rosbags sensor_msgs Image."""
    if encoding not in _OUTPUT_ENCODINGS:
        raise ValueError(f"output encoding must be one of {sorted(_OUTPUT_ENCODINGS)}, got {encoding!r}")
    channels, dtype = _OUTPUT_ENCODINGS[encoding]
    ndim = 3 if channels > 1 else 2
    if array.ndim != ndim or (channels > 1 and array.shape[2] != channels) or array.dtype.kind != dtype.kind:
        shape = "(H, W, 3)" if channels > 1 else "(H, W)"
        raise ValueError(f"{encoding} needs a {shape} {dtype} array, got {array.dtype} {array.shape}")
    pixels = np.ascontiguousarray(array, dtype=dtype)
    height, width = pixels.shape[:2]
    return typestore().types[IMAGE_TYPE](
        header=header_msg,
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=0,
        step=width * channels * dtype.itemsize,
        data=pixels.view(np.uint8).reshape(-1),
    )


def rgb_to_image(rgb: np.ndarray, encoding: str, header_msg: Any) -> Any:
    """(H, W, 3) uint8 RGB -> a camera-like sensor_msgs Image in rgb8 or bgr8."""
    if encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"camera encoding must be 'rgb8' or 'bgr8', got {encoding!r}")
    pixels = rgb if encoding == "rgb8" else rgb[..., ::-1]
    message = numpy_to_image(pixels, "rgb8", header_msg)
    message.encoding = encoding
    return message


def result_message(outputs: Any, header_msg: Any, scoring_variant: str) -> Any:
    """m2a/msg/AnomalySegmentation of one frame's `postprocess.FrameOutputs`, filled as the node fills it."""
    types = typestore().types
    roi, instance = types["sensor_msgs/msg/RegionOfInterest"], types[INSTANCE_TYPE]
    instances = [instance(bbox=roi(**inst.roi_fields()), **inst.message_fields()) for inst in outputs.instances]
    return types[RESULT_TYPE](
        header=header_msg,
        anomaly_mask=numpy_to_image(outputs.anomaly_mask, "mono8", header_msg),
        anomaly_score=numpy_to_image(outputs.anomaly_score, "32FC1", header_msg),
        semantic_labels=numpy_to_image(outputs.semantic, "mono8", header_msg),
        threshold=float(outputs.threshold),
        scoring_variant=scoring_variant,
        instances=instances,
    )


def serialize(msg: Any) -> bytes:
    """CDR bytes of a rosbags message."""
    return bytes(typestore().serialize_cdr(msg, msg.__msgtype__))
