"""Round trips and errors on CPU torch tensors (skipped when torch is not installed)."""

from __future__ import annotations

import numpy as np
import pytest

import splitzip_connector as sz
from conftest import CALIBRATION, EVALUATION, bf16_randn

torch = pytest.importorskip("torch")


def load_kv(path):
    try:
        from safetensors.torch import load_file
    except ImportError:
        pytest.skip("safetensors not installed")
    return load_file(str(path))


def test_real_kv_round_trip(kv_evaluation):
    kv = load_kv(EVALUATION)
    assert all(t.dtype == torch.bfloat16 and t.shape == (128, 3, 64) for t in kv.values())
    for name, t in kv.items():
        f = sz.compress(t)
        # the same bytes as from the numpy view of the same data
        assert f == sz.compress(kv_evaluation[name], dtype="bf16"), name
        y = sz.decompress(f)
        assert isinstance(y, torch.Tensor) and y.dtype == torch.bfloat16 and y.shape == t.shape
        assert torch.equal(y.view(torch.int16), t.view(torch.int16)), name


def test_calibrate_on_torch_tensors():
    cal, ev = load_kv(CALIBRATION), load_kv(EVALUATION)
    cb = sz.Codebook.calibrate(cal.values())
    raw = comp = 0
    for t in ev.values():
        f = sz.compress(t, cb)
        out = torch.empty_like(t)
        assert sz.decompress(f, out=out) is out
        assert torch.equal(out.view(torch.int16), t.view(torch.int16))
        raw, comp = raw + t.numel() * 2, comp + f.nbytes
    assert raw / comp > 1.30


@pytest.mark.parametrize(
    "dtype",
    [torch.bfloat16, torch.float16, torch.float32, torch.float64, torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64]
    + [getattr(torch, n) for n in ("float8_e5m2", "float8_e4m3fn") if hasattr(torch, n)],
)
@pytest.mark.parametrize("n", [0, 1, 4097])
def test_every_dtype(dtype, n):
    g = torch.Generator().manual_seed(n)
    t = (torch.randn(n, generator=g, dtype=torch.float32) * 50).to(dtype)
    y = sz.decompress(sz.compress(t))
    assert y.dtype == dtype and y.shape == t.shape
    assert torch.equal(y.view(torch.uint8), t.view(torch.uint8))


def test_frame_bytes_to_torch_and_back():
    t = torch.randn(64, 3, 64).to(torch.bfloat16)
    f = sz.compress(t)
    wire = bytes(f)
    y = sz.decompress(wire, device="cpu", shape=(64, 3, 64))  # a torch tensor from plain bytes
    assert isinstance(y, torch.Tensor) and torch.equal(y.view(torch.int16), t.view(torch.int16))
    y2 = sz.decompress(torch.frombuffer(bytearray(wire), dtype=torch.uint8))  # a uint8 tensor frame
    assert torch.equal(y2.view(torch.int16), t.view(torch.int16).reshape(-1))
    out = torch.empty(64 * 3 * 64, dtype=torch.int16)  # a same-size integer view is fine
    sz.decompress(f, out=out)
    assert torch.equal(out, t.view(torch.int16).reshape(-1))
    assert np.array_equal(sz.decompress(f, out=np.empty(t.numel(), np.uint16)), t.view(torch.int16).numpy().view(np.uint16).reshape(-1))


def test_numpy_frame_to_torch_out():
    x = bf16_randn(1000, seed=2)
    f = sz.compress(x, dtype="bf16")
    out = torch.empty(1000, dtype=torch.bfloat16)
    sz.decompress(f, out=out)
    assert np.array_equal(out.view(torch.int16).numpy().view(np.uint16), x)


def test_errors():
    t = torch.randn(16, 16).to(torch.bfloat16)
    with pytest.raises(sz.LayoutError, match=r"contiguous\(\)"):
        sz.compress(t.T)
    with pytest.raises(sz.DTypeError, match="complex"):
        sz.compress(torch.zeros(4, dtype=torch.complex64))
    f = sz.compress(t)
    with pytest.raises(sz.DTypeError, match="bfloat16|bf16"):
        sz.decompress(f, out=torch.empty(128, dtype=torch.float32))
    with pytest.raises(sz.BufferSizeError):
        sz.decompress(f, out=torch.empty(255, dtype=torch.bfloat16))


def test_grad_tensor():
    t = torch.randn(100, requires_grad=True)
    y = sz.decompress(sz.compress(t))
    assert torch.equal(y, t.detach())
    with pytest.raises(sz.LayoutError, match="detach"):
        sz.decompress(sz.compress(t), out=t)


@pytest.mark.parametrize("mode", ["fast", "high-ratio"])
@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float16, torch.float32] + ([torch.float8_e4m3fn] if hasattr(torch, "float8_e4m3fn") else [])
)
def test_both_modes(dtype, mode):
    g = torch.Generator().manual_seed(7)
    t = (torch.randn(3, 4097, generator=g) * 3).to(dtype)
    for checksum in (False, True):
        f = sz.compress(t, mode=mode, checksum=checksum)
        assert f.checksum == checksum
        assert f.mode == ("fast" if f.is_raw else mode)
        y = sz.decompress(f)
        assert isinstance(y, torch.Tensor) and y.dtype == dtype and y.shape == t.shape
        assert torch.equal(y.view(torch.uint8), t.view(torch.uint8))


def test_high_ratio_real_kv_same_frames_as_numpy(kv_evaluation):
    kv = load_kv(EVALUATION)
    table = sz.CodeTable.calibrate(load_kv(CALIBRATION).values())
    assert table == sz.CodeTable.default()
    raw, framed = {None: 0, "pinned": 0}, {None: 0, "pinned": 0}
    for name, t in kv.items():
        for book in (None, table):
            f = sz.compress(t, book, mode="high-ratio")
            assert f == sz.compress(kv_evaluation[name], book, dtype="bf16", mode="high-ratio"), name
            assert f.mode == "high-ratio", name
            key = None if book is None else "pinned"
            raw[key] += t.numel() * 2
            framed[key] += f.nbytes
            out = torch.empty_like(t)
            assert sz.decompress(f, out=out) is out and torch.equal(out.view(torch.int16), t.view(torch.int16))
    # Each frame's own table, and one table pinned for every layer (which fits layer 0's V poorly: 1.10x).
    assert raw[None] / framed[None] > 1.46 and raw["pinned"] / framed["pinned"] > 1.44
