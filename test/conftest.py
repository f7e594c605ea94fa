"""Shared test set-up: keep DDS on this machine, and skip (or, under `make test` and CI, fail) the ROS tests
when rclpy or our messages cannot be imported.

The environment is set here, before any test imports rclpy, and only where the caller (the Makefile) has not
set it already (shared/design/ROS2_ON_PIP.md: never in the node itself).
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
# A domain of this run's own (0..101 are valid on Linux), so parallel runs do not see each other.
os.environ.setdefault("ROS_DOMAIN_ID", str(20 + os.getpid() % 80))

ROS_REQUIRED = os.environ.get("CI", "").lower() == "true" or os.environ.get("M2A_REQUIRE_ROS") == "1"


def _ros_import_error() -> str | None:
    try:
        import rclpy  # noqa: F401
        from m2a.msg import AnomalySegmentation  # noqa: F401
    except ImportError as e:
        return f"{type(e).__name__}: {e}"
    return None


def require_ros() -> None:
    """Skip the calling test when rclpy or m2a.msg is missing; fail instead under `make test` or CI=true."""
    error = _ros_import_error()
    if error is None:
        return
    reason = f"ROS 2 not importable ({error}); `make ros` installs rclpy and builds m2a.msg into .venv"
    if ROS_REQUIRED:
        pytest.fail(f"{reason} [CI=true or M2A_REQUIRE_ROS=1: ROS tests must run]", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def rclpy_context():
    """An initialised rclpy Context of its own for a test module, shut down afterwards."""
    require_ros()
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.try_shutdown(context=context)
