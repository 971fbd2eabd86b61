"""Shared fixtures of the splitzip_connector tests.

The tests import the installed package (make py-build installs the wheel into the venv), never the source
tree: python/ is not on sys.path here, so a stale build cannot hide behind the sources.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parent.parent / "data"
CALIBRATION = DATA / "kv_calibration.safetensors"
EVALUATION = DATA / "kv_evaluation.safetensors"


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file as numpy arrays; BF16 tensors as uint16 arrays of the same shape.
    (A few lines instead of safetensors.numpy, which has no bfloat16 without ml_dtypes.)"""
    raw = path.read_bytes()
    (n,) = struct.unpack_from("<Q", raw, 0)
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    kinds = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32, "U8": np.uint8}
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(raw, kinds[meta["dtype"]], (b - a) // np.dtype(kinds[meta["dtype"]]).itemsize, base + a).reshape(meta["shape"])
    return out


@pytest.fixture(scope="module")
def plane():
    """An in-process control plane (embedded NATS, memory storage) per test module."""
    from splitzip_connector.handoff import ControlPlane

    p = ControlPlane(storage="memory", namespace="pytest")
    yield p
    p.close()


@pytest.fixture(scope="session")
def kv_calibration() -> dict[str, np.ndarray]:
    return read_safetensors(CALIBRATION)


@pytest.fixture(scope="session")
def kv_evaluation() -> dict[str, np.ndarray]:
    return read_safetensors(EVALUATION)


def bf16_randn(n: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """n bf16 values (uint16 bits) of a normal distribution, rounded to nearest even."""
    f = (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)
    u = f.view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def pytest_collection_modifyitems(config, items):
    from splitzip_connector import cuda_available

    if cuda_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU (torch.cuda and the CUDA driver); run on the GPU machine")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
