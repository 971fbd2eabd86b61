"""The GPU backend's host-side parts, which run without a GPU: the exponent histogram its "adaptive" tables are
learned from (counted with torch, here on the CPU), which frames its decoders read, its default tables, and the
binding's dtype-taking GPU entry points up to the point where they need a driver."""

from __future__ import annotations

import numpy as np
import pytest

import splitzip_connector as sz
from conftest import EVALUATION, bf16_randn
from splitzip_connector import cuda, dtypes
from splitzip_connector.codebook import coding
from splitzip_connector._binding import MODE_FAST, MODE_HIGH_RATIO, ext
from splitzip_connector.errors import translate

FP8_CODES = {"fp8_e4m3": dtypes.FP8_E4M3, "fp8_e5m2": dtypes.FP8_E5M2}


def _fp8_kv(torch, name: str):
    """The evaluation fixture quantised to fp8 a tensor at a time (per-tensor scale amax/largest, saturating)
    and concatenated: real KV's skewed exponents."""
    from safetensors.torch import load_file

    dt, largest = {"fp8_e4m3": (torch.float8_e4m3fn, 448.0), "fp8_e5m2": (torch.float8_e5m2, 57344.0)}[name]
    out = []
    for t in load_file(str(EVALUATION)).values():
        f = t.float().reshape(-1)
        out.append((f / (float(f.abs().max()) / largest)).clamp(-largest, largest).to(dt))
    return torch.cat(out)


@pytest.mark.parametrize("name", list(FP8_CODES))
def test_fp8_exponent_counts_give_the_codecs_table(name):
    """The histogram the GPU path counts for fp8 (e4m3 bits 3-6, e5m2 bits 2-6 of each byte), counted here by
    the same torch code on CPU tensors: one count per exponent value, and the table Go learns from the counts is
    the one it learns from the tensor itself (CodeTable.calibrate), for real KV, scaled KV and random bytes."""
    torch = pytest.importorskip("torch")
    code = FP8_CODES[name]
    kv = _fp8_kv(torch, name)
    dt = kv.dtype
    g = torch.Generator().manual_seed(3)
    cases = {
        "kv": kv,
        "kv/4096": (kv[:50_000].float() / 4096).to(dt),
        "random": torch.randint(0, 256, (20_000,), dtype=torch.uint8, generator=g).view(dt),
        "one": kv[:1].clone(),
    }
    width = 4 if name == "fp8_e4m3" else 5
    for case, x in cases.items():
        counts = cuda._exponent_counts(torch, x, code)
        assert counts.shape == (1 << width,) and int(counts.sum()) == x.numel(), case
        want = sz.CodeTable.calibrate(x)
        assert want.dtype == name
        assert sz.CodeTable.bytes_from_counts(counts, code) == want.to_bytes(), case
        # A uint8 tensor of the same bytes (dtype= given) counts the same.
        assert np.array_equal(cuda._exponent_counts(torch, x.view(torch.uint8), code), counts), case
    # The counts are of the exponent field alone: flipping sign and mantissa bits leaves them as they were.
    b = kv[:20_000].view(torch.uint8)
    keep = ((1 << width) - 1) << (7 - width)
    flipped = (b ^ (0xFF ^ keep)).view(dt)
    assert np.array_equal(cuda._exponent_counts(torch, flipped, code), cuda._exponent_counts(torch, kv[:20_000], code))


def test_bf16_exponent_counts_give_the_codecs_table():
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(bf16_randn(30_000, seed=4).view(np.int16)).view(torch.bfloat16)
    counts = cuda._exponent_counts(torch, x)
    assert counts.shape == (256,) and int(counts.sum()) == x.numel()
    assert sz.CodeTable.bytes_from_counts(counts, "bf16") == sz.CodeTable.calibrate(x).to_bytes()


def test_which_frames_the_gpu_decoders_read():
    """Raw frames, bf16 frames of both modes and high-ratio fp8 frames, without a payload checksum, go to the
    GPU decoders; the others are decoded on the host."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    f = (np.random.default_rng(5).standard_normal(40_000) * 3).astype(np.float32)
    bf16 = bf16_randn(40_000, seed=5)
    cases = [
        ("bf16 fast", sz.compress(bf16, dtype="bf16"), True),
        ("bf16 high-ratio", sz.compress(bf16, dtype="bf16", mode="high-ratio"), True),
        ("bf16 checksum", sz.compress(bf16, dtype="bf16", checksum=True), False),
        ("fp16 high-ratio", sz.compress(f.astype(np.float16), mode="high-ratio"), False),
        ("int32 raw", sz.compress(np.arange(1000, dtype=np.int32)), True),
    ]
    for name, t in (("fp8_e4m3", ml_dtypes.float8_e4m3fn), ("fp8_e5m2", ml_dtypes.float8_e5m2)):
        q = f.astype(t)
        cases += [
            (f"{name} high-ratio", sz.compress(q, mode="high-ratio"), True),
            (f"{name} high-ratio checksum", sz.compress(q, mode="high-ratio", checksum=True), False),
            # The fast mode codes e5m2 (on the CPU only: host) and carries e4m3 raw (any decoder).
            (f"{name} fast", sz.compress(q, "adaptive"), name == "fp8_e4m3"),
        ]
    for name, frame, reads in cases:
        h = frame.header
        assert cuda._gpu_reads(h) == reads, name
        if "high-ratio" in name and not frame.is_raw:
            assert cuda._mode_code(h) == MODE_HIGH_RATIO, name
        if "fast" in name:
            assert cuda._mode_code(h) == MODE_FAST, name


def test_gpu_default_tables():
    """The GPU's table where none is named (None) or "default" is: the dtype's built-in one. fp8 has none: with
    None its tensors get their own table, and "default" raises CodebookError, as on the CPU."""
    implicit = coding(None, None, "high-ratio", gpu=True)
    named = coding("default", None, "high-ratio", gpu=True)
    assert implicit.implicit and not named.implicit
    assert not coding(None, None, "high-ratio").implicit  # the CPU's None is "adaptive"
    for c in (implicit, named):
        assert cuda._default_table(dtypes.BF16, c) == sz.CodeTable.default("bf16")
    for name, code in FP8_CODES.items():
        with pytest.raises(sz.CodebookError, match="no built-in code table"):
            sz.CodeTable.default(name)
        assert cuda._default_table(code, implicit) is None, name
        with pytest.raises(sz.CodebookError, match=f"{name} has no built-in code table"):
            cuda._default_table(code, named)


def test_gpu_dtype_entry_points_without_a_gpu():
    """The binding's dtype-taking high-ratio GPU functions exist with the arguments cuda.py passes: dtypes the
    kernels do not code fail first, with a dtype error; the others fail on the missing driver."""
    for code in (dtypes.BF16, dtypes.FP8_E4M3, dtypes.FP8_E5M2):
        assert ext.pybind_CUDAHighRatioDTypeWorkspaceSize(code, 1 << 20) > 0
    assert ext.pybind_CUDAHighRatioDTypeWorkspaceSize(dtypes.BF16, 1 << 20) == ext.pybind_CUDAHighRatioWorkspaceSize(1 << 20)
    for code in (dtypes.FP16, dtypes.FP32, dtypes.INT8, 0, 99):
        calls = (
            lambda: ext.pybind_CUDAHighRatioDTypeWorkspaceSize(code, 1 << 20),
            lambda: ext.pybind_CUDAEncodeHighRatioDType(0, 0, code, 0x1000, 16, 0x5000, 3, 0x2000, 0x3000, 0x4000),
            lambda: ext.pybind_CUDADecodeHighRatioDType(0, 0, code, 0x1000, 100, 0x2000, 16, 0x3000),
        )
        for call in calls:
            with pytest.raises(RuntimeError, match=r"^\[dtype\]") as e:
                call()
            assert isinstance(translate(e.value), sz.DTypeError)
    if sz.cuda_available():
        return  # test_cuda.py runs them
    for code in FP8_CODES.values():
        with pytest.raises(RuntimeError, match=r"^\[(no_driver|cuda)\]"):
            ext.pybind_CUDAEncodeHighRatioDType(0, 0, code, 0x1000, 16, 0x5000, 3, 0x2000, 0x3000, 0x4000)
        with pytest.raises(RuntimeError, match=r"^\[(no_driver|cuda)\]"):
            ext.pybind_CUDADecodeHighRatioDType(0, 0, code, 0x1000, 100, 0x2000, 16, 0x3000)
