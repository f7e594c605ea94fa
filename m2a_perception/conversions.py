"""sensor_msgs Image / CompressedImage <-> numpy, without copies where the layout allows.

Incoming: `image_msg_to_rgb` gives an (H, W, 3) uint8 RGB array. For ``rgb8`` it is a view of the message's
buffer (no copy, also with row padding); ``bgr8``, ``mono8``, ``rgba8`` and ``bgra8`` take one OpenCV
conversion. Other 8-bit encodings (Bayer, YUV) go through cv_bridge when it is installed (it is optional: it
is not on PyPI for ROS 2). 16-bit and float images are rejected: the network takes 8-bit colour frames.
Every inconsistency (unknown encoding, wrong step, size mismatch, empty data, undecodable bytes) raises
`MalformedImageError` naming the field and what was expected.

Outgoing: `rgb_to_image_msg` fills an Image from an rgb8 (H, W, 3) uint8, mono8 (H, W) uint8 or 32FC1 (H, W)
float32 array with one copy (into the message's ``array('B')``, which rclpy then serialises). `image_msg_sharing`
builds the same message without that copy: its ``data`` is the array's own buffer, which rclpy's generated
converter reads through the buffer protocol when publishing (the node publishes at once, so nothing changes it in
between); where the installed message code cannot do that (checked once), it copies like `rgb_to_image_msg`.

Works with any object that has the messages' fields (duck typing); only `rgb_to_image_msg` imports
sensor_msgs, and only when called.
"""

from __future__ import annotations

import array
import sys
from typing import Any

import cv2
import numpy as np

__all__ = [
    "INPUT_ENCODINGS",
    "OUTPUT_ENCODINGS",
    "MalformedImageError",
    "compressed_msg_to_rgb",
    "image_msg_sharing",
    "image_msg_to_rgb",
    "rgb_to_image_msg",
]

# encoding -> (channels, OpenCV conversion to RGB or None for none)
_NATIVE: dict[str, tuple[int, int | None]] = {
    "rgb8": (3, None),
    "bgr8": (3, cv2.COLOR_BGR2RGB),
    "mono8": (1, cv2.COLOR_GRAY2RGB),
    "8UC1": (1, cv2.COLOR_GRAY2RGB),
    "rgba8": (4, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, cv2.COLOR_BGRA2RGB),
}
INPUT_ENCODINGS: tuple[str, ...] = tuple(_NATIVE)
# encoding -> (dtype, channels) of the arrays `rgb_to_image_msg` accepts
_OUTPUT: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "mono8": (np.dtype(np.uint8), 1),
    "32FC1": (np.dtype(np.float32), 1),
}
OUTPUT_ENCODINGS: tuple[str, ...] = tuple(_OUTPUT)
_WIDE = ("16", "32", "64")  # bit depths in encodings such as mono16, rgb16, 16UC1, 32FC1, 64FC1
_MAX_SIDE = 1 << 15  # larger images are certainly malformed (and would exhaust memory)


class MalformedImageError(ValueError):
    """An image message that cannot be turned into an RGB frame; the message names the field."""


def _describe_encoding_error(encoding: str) -> str:
    supported = ", ".join(INPUT_ENCODINGS)
    if any(bits in encoding for bits in _WIDE):
        return (
            f"Image.encoding: {encoding!r} is not 8-bit; the node takes 8-bit colour or grey frames "
            f"({supported}): convert upstream (e.g. image_proc) or publish rgb8/bgr8"
        )
    return f"Image.encoding: expected one of {supported} (or any 8-bit encoding cv_bridge knows), got {encoding!r}"


def _check_dims(msg: Any, channels: int) -> tuple[int, int, int]:
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if not (0 < height <= _MAX_SIDE and 0 < width <= _MAX_SIDE):
        raise MalformedImageError(
            f"Image.height x width: expected 1..{_MAX_SIDE} each, got {height} x {width}"
            + (" (empty image)" if height == 0 or width == 0 else "")
        )
    row = width * channels
    if step < row:
        raise MalformedImageError(
            f"Image.step: expected >= width * {channels} channels = {row} bytes for {msg.encoding!r}, got {step}"
        )
    size = len(msg.data)
    if size == 0:
        raise MalformedImageError(f"Image.data: empty, expected step * height = {step * height} bytes")
    if size != step * height:
        raise MalformedImageError(
            f"Image.data: expected step * height = {step} * {height} = {step * height} bytes, got {size}"
        )
    return height, width, step


def image_msg_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB; a zero-copy view for rgb8. Raises `MalformedImageError`."""
    encoding = str(msg.encoding)
    native = _NATIVE.get(encoding)
    if native is None:
        return _via_cv_bridge(msg, encoding)
    channels, conversion = native
    height, width, step = _check_dims(msg, channels)
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(height, step)
    pixels = rows[:, : width * channels]
    if channels == 1:
        image = pixels  # (H, W), a view; GRAY2RGB makes the (H, W, 3) copy
    else:
        image = pixels.reshape(height, width, channels)  # a view, also with row padding
    if conversion is None:
        return image
    return cv2.cvtColor(image, conversion)


def _via_cv_bridge(msg: Any, encoding: str) -> np.ndarray:
    """Encodings we do not convert natively: cv_bridge when installed (ROS 2's, from a ROS install), else refuse."""
    if any(bits in encoding for bits in _WIDE):
        raise MalformedImageError(_describe_encoding_error(encoding))
    bridge = _cv_bridge()
    if bridge is None:
        raise MalformedImageError(_describe_encoding_error(encoding))
    try:
        image = bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")
    except Exception as e:  # cv_bridge raises its own CvBridgeError, TypeError, ...
        raise MalformedImageError(f"Image.encoding: cv_bridge could not convert {encoding!r} to rgb8: {e}") from e
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise MalformedImageError(
            f"Image.encoding: cv_bridge gave {image.dtype} {image.shape} for {encoding!r}, expected (H, W, 3) uint8"
        )
    return image


_BRIDGE: Any = None
_BRIDGE_TRIED = False


def _cv_bridge() -> Any:
    """A `cv_bridge.CvBridge` when ROS 2's cv_bridge can be imported, else None (checked once)."""
    global _BRIDGE, _BRIDGE_TRIED
    if not _BRIDGE_TRIED:
        _BRIDGE_TRIED = True
        try:
            from cv_bridge import CvBridge  # type: ignore[import-not-found]

            _BRIDGE = CvBridge()
        except Exception:  # not installed, or ROS 1's cv-bridge from PyPI (fails on import)
            _BRIDGE = None
    return _BRIDGE


def compressed_msg_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/CompressedImage (JPEG, PNG, ...) -> (H, W, 3) uint8 RGB, decoded with OpenCV."""
    fmt = str(msg.format)
    if "compressedDepth" in fmt:
        raise MalformedImageError(f"CompressedImage.format: {fmt!r} is a depth image, expected a colour image")
    size = len(msg.data)
    if size == 0:
        raise MalformedImageError("CompressedImage.data: empty, expected JPEG or PNG bytes")
    buffer = np.frombuffer(msg.data, dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)  # BGR, 8-bit (16-bit PNGs are scaled down)
    if image is None or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        head = bytes(buffer[:4]).hex()
        raise MalformedImageError(
            f"CompressedImage.data: {size} bytes (format {fmt!r}, starting {head}) are not a decodable image"
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _checked_contiguous(array_: np.ndarray, encoding: str) -> np.ndarray:
    spec = _OUTPUT.get(encoding)
    if spec is None:
        raise ValueError(f"encoding: expected one of {OUTPUT_ENCODINGS}, got {encoding!r}")
    dtype, channels = spec
    a = np.asarray(array_)
    expected_ndim = 3 if channels > 1 else 2
    if a.dtype != dtype or a.ndim != expected_ndim or (channels > 1 and a.shape[2] != channels) or a.size == 0:
        shape = "(H, W, 3)" if channels > 1 else "(H, W)"
        raise ValueError(f"array for {encoding}: expected a non-empty {shape} {dtype} array, got {a.dtype} {a.shape}")
    return np.ascontiguousarray(a)


def _image_msg(a: np.ndarray, header: Any, encoding: str) -> Any:
    """An Image with every field but ``data`` set for the C-contiguous array ``a``."""
    from sensor_msgs.msg import Image

    msg = Image()
    msg.header = header
    msg.height, msg.width = int(a.shape[0]), int(a.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(sys.byteorder == "big")
    msg.step = int(a.strides[0])
    return msg


def rgb_to_image_msg(array_: np.ndarray, header: Any, encoding: str) -> Any:
    """An (H, W, 3) uint8 (rgb8), (H, W) uint8 (mono8) or (H, W) float32 (32FC1) array -> sensor_msgs/Image."""
    a = _checked_contiguous(array_, encoding)
    msg = _image_msg(a, header, encoding)
    data = array.array("B")
    data.frombytes(a.data.cast("B"))  # the one copy
    msg.data = data
    return msg


def image_msg_sharing(array_: np.ndarray, header: Any, encoding: str) -> Any:
    """Like `rgb_to_image_msg`, but ``data`` shares the array's buffer (no copy) where rclpy can publish that.

    The message's ``data`` is then a flat uint8 numpy view (not an ``array('B')``); publishing serialises exactly
    the bytes `rgb_to_image_msg` would. Publish (or serialise) it before the array changes. Where the installed
    sensor_msgs code does not read buffers (`_sharing_supported`), ``data`` is a copy as in `rgb_to_image_msg`.
    """
    if not _sharing_supported():
        return rgb_to_image_msg(array_, header, encoding)
    a = _checked_contiguous(array_, encoding)
    msg = _image_msg(a, header, encoding)
    # rosidl's setter would copy anything but an array('B') element by element; its C converter takes any buffer
    msg._data = a.reshape(-1).view(np.uint8)  # noqa: SLF001 - a view of the contiguous array, no copy
    return msg


_SHARING: bool | None = None


def _sharing_supported() -> bool:
    """Whether an Image whose ``_data`` is a numpy buffer goes through rclpy's serialisation intact (checked once).

    rosidl_generator_py's C converter reads primitive arrays through the buffer protocol (ROS 2 Humble and
    later); other generated code gets the copy. (Compared after deserialising: CDR padding bytes are not
    initialised, so two serialisations of one message may differ there.)
    """
    global _SHARING
    if _SHARING is None:
        try:
            from rclpy.serialization import deserialize_message, serialize_message
            from sensor_msgs.msg import Image
            from std_msgs.msg import Header

            sample = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
            shared = _image_msg(sample, Header(), "rgb8")
            shared._data = sample.reshape(-1)  # noqa: SLF001
            back = deserialize_message(serialize_message(shared), Image)
            _SHARING = bytes(back.data) == sample.tobytes() and (back.height, back.width, back.step) == (2, 3, 9)
        except Exception:  # no rclpy, other slots, a converter that refuses buffers: copy
            _SHARING = False
    return _SHARING
