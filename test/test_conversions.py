"""Image / CompressedImage <-> numpy: encodings, zero-copy, and every kind of malformed message."""

from __future__ import annotations

import array
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from conftest import require_ros

from m2a_perception import conversions
from m2a_perception.conversions import (
    MalformedImageError,
    compressed_msg_to_rgb,
    image_msg_sharing,
    image_msg_to_rgb,
    rgb_to_image_msg,
)


def _frame(h: int = 6, w: int = 10) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _msg(pixels: np.ndarray, encoding: str, pad: int = 0) -> SimpleNamespace:
    """An Image-like message (duck-typed: conversions only read the fields) with ``pad`` bytes after each row."""
    rows = pixels.reshape(pixels.shape[0], -1)
    padded = np.zeros((rows.shape[0], rows.shape[1] + pad), dtype=np.uint8)
    padded[:, : rows.shape[1]] = rows
    return SimpleNamespace(
        height=pixels.shape[0],
        width=pixels.shape[1],
        encoding=encoding,
        is_bigendian=0,
        step=padded.shape[1],
        data=array.array("B", padded.tobytes()),
        header=None,
    )


@pytest.mark.parametrize("pad", [0, 4])
def test_rgb8_is_a_view_of_the_message(pad: int) -> None:
    rgb = _frame()
    msg = _msg(rgb, "rgb8", pad)
    out = image_msg_to_rgb(msg)
    np.testing.assert_array_equal(out, rgb)
    assert np.shares_memory(out, np.frombuffer(msg.data, dtype=np.uint8))


@pytest.mark.parametrize(
    ("encoding", "make"),
    [
        ("bgr8", lambda rgb: rgb[..., ::-1]),
        ("rgba8", lambda rgb: np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])),
        ("bgra8", lambda rgb: np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 7, np.uint8)])),
    ],
)
def test_colour_encodings_give_rgb(encoding: str, make) -> None:
    rgb = _frame()
    out = image_msg_to_rgb(_msg(np.ascontiguousarray(make(rgb)), encoding, pad=2))
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    np.testing.assert_array_equal(out, rgb)


def test_mono8_is_replicated_to_three_channels() -> None:
    grey = _frame()[..., 0]
    out = image_msg_to_rgb(_msg(np.ascontiguousarray(grey), "mono8", pad=3))
    assert out.shape == (*grey.shape, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


@pytest.mark.parametrize(
    ("change", "field", "expected"),
    [
        ({"step": 29}, "Image.step", ">= width * 3"),
        ({"encoding": "yuv_weird"}, "Image.encoding", "expected one of"),
        ({"encoding": "mono16"}, "Image.encoding", "not 8-bit"),
        ({"encoding": "16UC1"}, "Image.encoding", "not 8-bit"),
        ({"encoding": "32FC1"}, "Image.encoding", "not 8-bit"),
        ({"height": 7}, "Image.data", "expected step * height = 30 * 7 = 210 bytes, got 180"),
        ({"data": array.array("B")}, "Image.data", "empty"),
        ({"width": 0}, "Image.height x width", "got 6 x 0"),
        ({"height": 100_000}, "Image.height x width", "expected 1.."),
    ],
)
def test_malformed_images_name_the_field(change: dict, field: str, expected: str) -> None:
    msg = _msg(_frame(), "rgb8")
    for k, v in change.items():
        setattr(msg, k, v)
    with pytest.raises(MalformedImageError) as info:
        image_msg_to_rgb(msg)
    assert field in str(info.value) and expected in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_compressed_jpeg_and_png(ext: str) -> None:
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:, :24] = (200, 30, 10)
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    out = compressed_msg_to_rgb(SimpleNamespace(format=ext[1:], data=array.array("B", buf.tobytes())))
    assert out.shape == rgb.shape and out.dtype == np.uint8
    if ext == ".png":
        np.testing.assert_array_equal(out, rgb)
    else:  # lossy (and chroma-subsampled at the edge): the inside of the red half must stay red, not blue
        np.testing.assert_allclose(out[:, :16].mean(axis=(0, 1)), (200, 30, 10), atol=8)


@pytest.mark.parametrize(
    ("data", "fmt", "expected"),
    [
        (b"", "jpeg", "empty"),
        (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 2, "jpeg", "not a decodable image"),
        (b"not an image at all", "png", "not a decodable image"),
        (b"\x00" * 64, "16UC1; compressedDepth png", "depth image"),
    ],
)
def test_corrupt_compressed_images_are_refused(data: bytes, fmt: str, expected: str) -> None:
    with pytest.raises(MalformedImageError, match=expected):
        compressed_msg_to_rgb(SimpleNamespace(format=fmt, data=array.array("B", data)))


def test_truncated_jpeg_is_refused() -> None:
    ok, buf = cv2.imencode(".jpg", _frame(64, 128))
    assert ok
    with pytest.raises(MalformedImageError, match="CompressedImage.data"):
        compressed_msg_to_rgb(SimpleNamespace(format="jpeg", data=array.array("B", buf.tobytes()[: len(buf) // 2])))


def test_output_messages_round_trip() -> None:
    require_ros()
    from std_msgs.msg import Header

    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    rgb = _frame(5, 7)
    score = np.linspace(-0.5, 1.5, 35, dtype=np.float32).reshape(5, 7)
    mask = (score > 0.5).astype(np.uint8) * 255
    m = rgb_to_image_msg(rgb, header, "rgb8")
    assert (m.height, m.width, m.step, m.encoding) == (5, 7, 21, "rgb8")
    assert m.header.frame_id == "cam" and m.header.stamp.nanosec == 345
    np.testing.assert_array_equal(image_msg_to_rgb(m), rgb)
    s = rgb_to_image_msg(score[:, ::1], header, "32FC1")
    assert (s.step, s.encoding) == (28, "32FC1")
    np.testing.assert_array_equal(np.frombuffer(s.data, dtype=np.float32).reshape(5, 7), score)
    k = rgb_to_image_msg(mask, header, "mono8")
    np.testing.assert_array_equal(np.frombuffer(k.data, dtype=np.uint8).reshape(5, 7), mask)
    # a non-contiguous input is copied into a contiguous message
    t = rgb_to_image_msg(np.asfortranarray(mask), header, "mono8")
    np.testing.assert_array_equal(np.frombuffer(t.data, dtype=np.uint8).reshape(5, 7), mask)


def test_shared_output_messages_serialise_like_copied_ones() -> None:
    require_ros()
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    assert conversions._sharing_supported()  # these wheels read buffers: the node publishes without a copy
    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    rgb = _frame(5, 7)
    score = np.linspace(-0.5, 1.5, 35, dtype=np.float32).reshape(5, 7)
    mask = (score > 0.5).astype(np.uint8) * 255
    for array_, encoding in ((rgb, "rgb8"), (score, "32FC1"), (mask, "mono8"), (np.asfortranarray(mask), "mono8")):
        shared = image_msg_sharing(array_, header, encoding)
        copied = rgb_to_image_msg(array_, header, encoding)
        # compared deserialised: CDR padding bytes are not initialised, raw serialisations may differ there
        assert deserialize_message(serialize_message(shared), Image) == copied
        assert bytes(shared.data) == bytes(copied.data)
    assert np.shares_memory(image_msg_sharing(score, header, "32FC1").data, score)  # no copy
    with pytest.raises(ValueError, match="float32"):
        image_msg_sharing(np.zeros((4, 4), np.float64), None, "32FC1")


def test_shared_output_messages_copy_where_buffers_are_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    require_ros()
    from std_msgs.msg import Header

    monkeypatch.setattr(conversions, "_SHARING", False)
    msg = image_msg_sharing(np.ones((2, 3), np.uint8), Header(), "mono8")
    assert isinstance(msg.data, array.array) and bytes(msg.data) == b"\x01" * 6


@pytest.mark.parametrize(
    ("array_", "encoding", "expected"),
    [
        (np.zeros((4, 4), np.float64), "32FC1", "float32"),
        (np.zeros((4, 4, 3), np.uint8), "mono8", "(H, W) uint8"),
        (np.zeros((4, 4), np.uint8), "rgb8", "(H, W, 3) uint8"),
        (np.zeros((0, 4), np.uint8), "mono8", "non-empty"),
        (np.zeros((4, 4), np.uint8), "bgr16", "expected one of"),
    ],
)
def test_output_conversion_refuses_wrong_arrays(array_: np.ndarray, encoding: str, expected: str) -> None:
    require_ros()
    with pytest.raises(ValueError) as info:
        rgb_to_image_msg(array_, None, encoding)
    assert expected in str(info.value)
