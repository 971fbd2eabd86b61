"""The GPU path on CUDA tensors: skipped without a GPU (conftest), run on the H100 machine.

Every frame the GPU writes must be byte-identical to the CPU codec's, and decode back bit-exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

import splitzip_connector as sz
from conftest import CALIBRATION, EVALUATION, bf16_randn

pytestmark = pytest.mark.cuda
torch = pytest.importorskip("torch")


def cuda_bf16(n: int, seed: int = 0) -> "torch.Tensor":
    x = bf16_randn(n, seed=seed)
    return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16).cuda()


@pytest.mark.parametrize("n", [1, 7, 4096, 4097, 100_000, 1 << 22])
def test_gpu_round_trip_matches_cpu(n):
    t = cuda_bf16(n, seed=n)
    df = sz.compress(t)
    assert isinstance(df, sz.DeviceFrame) and df.device == t.device
    cpu = sz.compress(t.cpu())
    assert df.nbytes == cpu.nbytes
    assert df.to_host() == cpu, "GPU frame differs from the CPU codec's"
    y = sz.decompress(df)
    assert y.is_cuda and y.dtype == torch.bfloat16 and y.shape == t.shape
    assert torch.equal(y.view(torch.int16), t.view(torch.int16))


def test_real_kv_on_gpu():
    from safetensors.torch import load_file

    kv = {k: v.cuda() for k, v in load_file(str(EVALUATION)).items()}
    cb = sz.Codebook.calibrate(kv.values())  # CUDA tensors are counted on the host
    for name, t in kv.items():
        df = sz.compress(t, cb)
        assert df.to_host() == sz.compress(t.cpu(), cb), name
        out = torch.empty_like(t)
        assert sz.decompress(df, out=out) is out
        assert torch.equal(out.view(torch.int16), t.view(torch.int16)), name


def test_host_frame_into_cuda_out_and_device_frame_from_host():
    t = cuda_bf16(50_000, seed=3)
    host = sz.compress(t.cpu())
    out = torch.empty_like(t)
    sz.decompress(bytes(host), out=out)
    assert torch.equal(out.view(torch.int16), t.view(torch.int16))
    df = sz.DeviceFrame.from_host(host)
    assert torch.equal(sz.decompress(df).view(torch.int16), t.view(torch.int16))
    y = sz.decompress(host, device="cuda")
    assert y.is_cuda and torch.equal(y.view(torch.int16), t.view(torch.int16))
    raw_u8 = df.data  # a plain uint8 CUDA tensor holding the frame
    assert torch.equal(sz.decompress(raw_u8).view(torch.int16), t.view(torch.int16))


def test_raw_frames_decode_on_gpu():
    x = np.arange(10_000, dtype=np.int32)
    f = sz.compress(x)
    y = sz.decompress(f, device="cuda")
    assert y.is_cuda and y.dtype == torch.int32 and torch.equal(y.cpu(), torch.from_numpy(x))


def test_non_default_stream_and_no_sync():
    t = cuda_bf16(1 << 20, seed=4)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        df = sz.compress(t)
        status = torch.empty(1, dtype=torch.int32, device="cuda")
        y = sz.decompress(df, check=False, status=status)
    s.synchronize()
    sz.check_status(status)
    assert torch.equal(y.view(torch.int16), t.view(torch.int16))


def test_corrupt_frame_raises_on_gpu():
    t = cuda_bf16(20_000, seed=5)
    wire = bytearray(sz.compress(t.cpu()).tobytes())
    bad = torch.frombuffer(wire, dtype=torch.uint8).clone()
    bad[12] ^= 1  # header: checksum mismatch
    with pytest.raises(sz.FrameError):
        sz.decompress(bad.cuda(), out=torch.empty_like(t))
    df = sz.compress(t)
    df.buffer[0] ^= 0xFF  # magic, behind the header check of the host path
    with pytest.raises(sz.NotAFrameError):
        sz.decompress(df)
    status = torch.empty(1, dtype=torch.int32, device="cuda")
    sz.decompress(df, check=False, status=status)
    with pytest.raises(sz.NotAFrameError):
        sz.check_status(status)


def test_gpu_errors():
    with pytest.raises(sz.DTypeError, match="bf16"):
        sz.compress(torch.zeros(16, dtype=torch.float32, device="cuda"))
    t = cuda_bf16(1000)
    with pytest.raises(sz.LayoutError, match="16-byte"):
        sz.compress(t[1:])
    with pytest.raises(sz.LayoutError, match="contiguous"):
        sz.compress(t.view(10, 100).T)
    with pytest.raises(ValueError, match="checksum"):
        sz.compress(t, checksum=True)
    with pytest.raises(ValueError, match="checksum"):
        sz.compress(t, mode="high-ratio", checksum=True)
    with pytest.raises(sz.DTypeError, match="bf16"):
        sz.compress(torch.zeros(16, dtype=torch.float16, device="cuda"), mode="high-ratio")
    with pytest.raises(sz.CodebookError, match="fp32"):
        sz.compress(t, sz.CodeTable.default("fp32"), mode="high-ratio")
    with pytest.raises(sz.BufferSizeError):
        sz.decompress(sz.compress(t), out=torch.empty(999, dtype=torch.bfloat16, device="cuda"))


def test_load_kernels():
    sz.load_kernels()
    sz.load_kernels("cuda:0")


# The high-ratio mode on the GPU: frames byte-identical to the CPU codec's with the same code table.


@pytest.mark.parametrize("n", [1, 7, 1024, 16_384, 16_385, 100_000, 1 << 22])
def test_high_ratio_gpu_matches_cpu(n):
    t = cuda_bf16(n, seed=n)
    df = sz.compress(t, mode="high-ratio")  # on a GPU: the built-in table
    assert isinstance(df, sz.DeviceFrame) and df.mode == "high-ratio"
    cpu = sz.compress(t.cpu(), "default", mode="high-ratio")
    assert df.to_host() == cpu, "GPU frame differs from the CPU codec's"
    y = sz.decompress(df)
    assert y.is_cuda and y.dtype == torch.bfloat16 and y.shape == t.shape
    assert torch.equal(y.view(torch.int16), t.view(torch.int16))


def test_high_ratio_adaptive_on_gpu_is_the_calibrated_table():
    """"adaptive" on a GPU: the exponent histogram counted by torch, the table built by Go from it; the frame
    is the CPU's with CodeTable.calibrate on the same tensor."""
    for n, seed in ((100_000, 1), (1 << 20, 2), (5000, 3)):
        t = cuda_bf16(n, seed=seed)
        if seed == 3:
            t = t * 1e-20  # exponents the built-in table has no codes of
        df = sz.compress(t, "adaptive", mode="high-ratio")
        own = sz.CodeTable.calibrate(t.cpu())
        assert df.to_host() == sz.compress(t.cpu(), own, mode="high-ratio")
        assert torch.equal(sz.decompress(df).view(torch.int16), t.view(torch.int16))
        if seed == 3:  # the built-in table escapes every exponent here: a raw frame
            assert sz.compress(t.cpu(), "default", mode="high-ratio").is_raw and not df.to_host().is_raw


def test_fast_adaptive_on_gpu_is_the_cpu_adaptive_frame():
    """Fast mode "adaptive" on a GPU: the codebook calibrated from the histogram torch counts there; the frame
    is the CPU encoder's adaptive frame of the same tensor."""
    for n, seed in ((100_000, 4), (1 << 20, 5)):
        t = cuda_bf16(n, seed=seed) * (1e-3 if seed == 5 else 1)
        df = sz.compress(t, "adaptive")
        assert df.to_host() == sz.compress(t.cpu(), "adaptive")
        assert torch.equal(sz.decompress(df).view(torch.int16), t.view(torch.int16))


def test_high_ratio_real_kv_on_gpu():
    from safetensors.torch import load_file

    kv = {k: v.cuda() for k, v in load_file(str(EVALUATION)).items()}
    table = sz.CodeTable.calibrate(kv.values())
    raw = comp = 0
    for name, t in kv.items():
        for book in (table, None, "adaptive"):
            df = sz.compress(t, book, mode="high-ratio")
            want = sz.compress(t.cpu(), table if book is table else sz.CodeTable.calibrate(t) if book else "default",
                               mode="high-ratio")
            assert df.to_host() == want, (name, book)
            out = torch.empty_like(t)
            assert sz.decompress(df, out=out) is out
            assert torch.equal(out.view(torch.int16), t.view(torch.int16)), (name, book)
        raw, comp = raw + t.numel() * 2, comp + df.nbytes
    assert raw / comp >= 1.46  # "adaptive", a frame per tensor


def test_high_ratio_frames_from_the_host_decode_on_gpu():
    t = cuda_bf16(70_000, seed=6)
    for f in (sz.compress(t.cpu(), mode="high-ratio"), sz.compress(t.cpu(), "default", mode="high-ratio")):
        assert f.mode == "high-ratio"
        out = torch.empty_like(t)
        sz.decompress(bytes(f), out=out)  # the header on the host picks the decoder
        assert torch.equal(out.view(torch.int16), t.view(torch.int16))
        df = sz.DeviceFrame.from_host(f)
        assert df.mode == "high-ratio"
        assert torch.equal(sz.decompress(df).view(torch.int16), t.view(torch.int16))
        bare = df.data  # a uint8 CUDA tensor: its header is read back to pick the decoder
        assert torch.equal(sz.decompress(bare).view(torch.int16), t.view(torch.int16))


def test_frames_the_gpu_decoders_do_not_read_decode_on_the_host():
    t = cuda_bf16(30_000, seed=7)
    for mode in ("fast", "high-ratio"):
        f = sz.compress(t.cpu(), mode=mode, checksum=True)
        y = sz.decompress(bytes(f), device="cuda")
        assert y.is_cuda and torch.equal(y.view(torch.int16), t.view(torch.int16))
        bad = bytearray(f.tobytes())
        bad[-1] ^= 1
        with pytest.raises(sz.ChecksumError):
            sz.decompress(bytes(bad), out=torch.empty_like(t))
        # In device memory (its header read back) and as a DeviceFrame, likewise.
        bare = torch.frombuffer(bytearray(f.tobytes()), dtype=torch.uint8).cuda()
        assert torch.equal(sz.decompress(bare).view(torch.int16), t.view(torch.int16))
        with pytest.raises(sz.ChecksumError):
            sz.decompress(torch.frombuffer(bad, dtype=torch.uint8).cuda())
        df = sz.DeviceFrame.from_host(f)
        assert df.mode == mode
        assert torch.equal(sz.decompress(df).view(torch.int16), t.view(torch.int16))
    h = t.cpu().to(torch.float16)
    f = sz.compress(h, mode="high-ratio")
    y = sz.decompress(f, device="cuda")
    assert y.is_cuda and y.dtype == torch.float16 and torch.equal(y.cpu().view(torch.int16), h.view(torch.int16))


def test_high_ratio_non_default_stream_and_corruption():
    t = cuda_bf16(1 << 20, seed=8)
    table = sz.CodeTable.calibrate(t)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        df = sz.compress(t, table, mode="high-ratio")
        status = torch.empty(1, dtype=torch.int32, device="cuda")
        y = sz.decompress(df, check=False, status=status)
    s.synchronize()
    sz.check_status(status)
    assert torch.equal(y.view(torch.int16), t.view(torch.int16))
    df.buffer[0] ^= 0xFF
    with pytest.raises(sz.NotAFrameError):
        sz.decompress(df)


# fp8 on the GPU: fp8_e4m3 and fp8_e5m2 are coded by the high-ratio kernels (there is no fast-mode fp8 kernel),
# their frames byte-identical to the CPU codec's with the same code table.

# (name, torch dtype, largest finite value)
FP8 = [("fp8_e4m3", torch.float8_e4m3fn, 448.0), ("fp8_e5m2", torch.float8_e5m2, 57344.0)]
FP8_IDS = [f[0] for f in FP8]


def quantize_fp8(t: "torch.Tensor", dt: "torch.dtype", largest: float) -> "torch.Tensor":
    """A bf16 tensor quantised to fp8 as an fp8 KV cache does (internal/fp8 in Go): a per-tensor scale
    amax/largest, round to nearest even, saturating. On the CPU, so that the data is the same wherever the test
    runs."""
    f = t.cpu().float()
    amax = float(f.abs().max())
    return (f / (amax / largest if amax > 0 else 1.0)).clamp(-largest, largest).to(dt)


def fp8_kv(path, dt, largest) -> dict[str, "torch.Tensor"]:
    """The tensors of a real KV fixture quantised to fp8, on the GPU."""
    from safetensors.torch import load_file

    return {k: quantize_fp8(v, dt, largest).cuda() for k, v in load_file(str(path)).items()}


def fp8_tiled(n: int, dt, largest) -> "torch.Tensor":
    """n fp8 elements of the real KV fixture (quantised a tensor at a time, concatenated, repeated), on the GPU."""
    kv = fp8_kv(EVALUATION, dt, largest)
    flat = torch.cat([t.reshape(-1) for t in kv.values()])
    reps = -(-n // flat.numel())
    return flat.view(torch.uint8).repeat(reps)[:n].view(dt).clone()


def u8(x: "torch.Tensor") -> "torch.Tensor":
    """The bytes of an fp8 tensor, for bit-exact comparison (torch.equal does not take fp8)."""
    return x.view(torch.uint8)


def gpu_table(name: str, t: "torch.Tensor", book) -> "sz.CodeTable":
    """The table the GPU codes fp8 tensor t with, given book: a CodeTable itself; "adaptive" the tensor's own
    (CodeTable.calibrate); None the dtype's built-in table if it has one, else the tensor's own."""
    if isinstance(book, sz.CodeTable):
        return book
    if book is None:
        try:
            return sz.CodeTable.default(name)
        except sz.CodebookError:  # fp8 has none
            pass
    return sz.CodeTable.calibrate(t.cpu())


@pytest.mark.parametrize("name,dt,largest", FP8, ids=FP8_IDS)
@pytest.mark.parametrize("n", [1, 7, 16, 4097, 16_384, 16_385, 100_000, 1 << 22])
def test_fp8_high_ratio_gpu_matches_cpu(name, dt, largest, n):
    t = fp8_tiled(n, dt, largest)
    pinned = sz.CodeTable.calibrate([v.cpu() for v in fp8_kv(CALIBRATION, dt, largest).values()])
    assert pinned.dtype == name
    with pytest.raises(sz.CodebookError, match="no built-in code table"):  # as on the CPU
        sz.compress(t, "default", mode="high-ratio")
    for book in (pinned, None, "adaptive"):
        df = sz.compress(t, book, mode="high-ratio")
        assert isinstance(df, sz.DeviceFrame) and df.mode == "high-ratio" and df.dtype == name
        cpu = sz.compress(t.cpu(), gpu_table(name, t, book), mode="high-ratio")
        assert df.to_host() == cpu, f"GPU frame differs from the CPU codec's ({name}, {n}, {book})"
        y = sz.decompress(df)
        assert y.is_cuda and y.dtype == dt and y.shape == t.shape
        assert torch.equal(u8(y), u8(t)), (name, n, book)
    if n >= 16_384:
        assert not cpu.is_raw and cpu.ratio > 1.1, (name, n)


@pytest.mark.parametrize("name,dt,largest", FP8, ids=FP8_IDS)
def test_fp8_real_kv_on_gpu(name, dt, largest):
    """A frame per tensor of the evaluation fixture quantised to fp8: pinned (calibrated on the other fixture),
    the default and "adaptive" tables, each frame the CPU's and decoded bit-exactly into a given out."""
    kv = fp8_kv(EVALUATION, dt, largest)
    pinned = sz.CodeTable.calibrate([v.cpu() for v in fp8_kv(CALIBRATION, dt, largest).values()])
    raw = comp = 0
    for key, t in kv.items():
        for book in (pinned, None, "adaptive"):
            df = sz.compress(t, book, mode="high-ratio")
            assert df.to_host() == sz.compress(t.cpu(), gpu_table(name, t, book), mode="high-ratio"), (key, book)
            out = torch.empty_like(t)
            assert sz.decompress(df, out=out) is out
            assert torch.equal(u8(out), u8(t)), (key, book)
        raw, comp = raw + t.numel(), comp + df.nbytes
    # "adaptive", a frame per tensor (the CPU's figures for these frames: 1.173 e4m3, 1.374 e5m2).
    assert raw / comp >= {"fp8_e4m3": 1.17, "fp8_e5m2": 1.37}[name]


@pytest.mark.parametrize("name,dt,largest", FP8, ids=FP8_IDS)
def test_fp8_adaptive_on_gpu_is_the_calibrated_table(name, dt, largest):
    """"adaptive" for fp8 on a GPU: the exponent histogram counted there (e4m3 bits 3-6, e5m2 bits 2-6 of each
    byte), the table the CPU learns from the same tensor (CodeTable.calibrate), carried in the frame."""
    for n, scale in ((5000, 1.0), (100_000, 1.0), (1 << 20, 1.0), (30_000, 1e-3)):
        t = fp8_tiled(n, dt, largest)
        if scale != 1.0:  # smaller exponents, some below the fixture's: a table unlike the pinned one
            t = (t.float() * scale).to(dt)
        df = sz.compress(t, "adaptive", mode="high-ratio")
        own = sz.CodeTable.calibrate(t.cpu())
        host = df.to_host()
        assert host.info().code_table == own.lengths, (name, n)
        assert host == sz.compress(t.cpu(), own, mode="high-ratio"), (name, n)
        assert torch.equal(u8(sz.decompress(df)), u8(t)), (name, n)
    # A tensor given as its bytes (a uint8 tensor, as vLLM's fp8 caches are) with dtype=: the same frame.
    u = u8(t).clone()
    du = sz.compress(u, "adaptive", dtype=name, mode="high-ratio")
    assert du.dtype == name and du.to_host() == host
    assert torch.equal(u8(sz.decompress(du)), u)


@pytest.mark.parametrize("name,dt,largest", FP8, ids=FP8_IDS)
def test_fp8_raw_fallback_on_gpu(name, dt, largest):
    """Random bytes: no exponent distribution to code, so the high-ratio encoder writes a raw frame (the CPU's,
    byte for byte), which the GPU decoders read back, from the DeviceFrame (the high-ratio decoder) and from the
    host frame (its header says raw: the fast decoder)."""
    g = torch.Generator().manual_seed(7)
    t = torch.randint(0, 256, (100_003,), dtype=torch.uint8, generator=g).view(dt).cuda()
    pinned = sz.CodeTable.calibrate([v.cpu() for v in fp8_kv(CALIBRATION, dt, largest).values()])
    for book in ("adaptive", pinned):
        df = sz.compress(t, book, mode="high-ratio")
        host = df.to_host()
        assert host.is_raw and host == sz.compress(t.cpu(), gpu_table(name, t, book), mode="high-ratio"), book
        assert torch.equal(u8(sz.decompress(df)), u8(t)), book
        y = sz.decompress(bytes(host), device="cuda")
        assert y.is_cuda and y.dtype == dt and torch.equal(u8(y), u8(t)), book


def test_fp8_fast_mode_is_refused_on_gpu():
    for name, dt, largest in FP8:
        t = fp8_tiled(4096, dt, largest)
        for book in (None, "default", "adaptive"):
            with pytest.raises(sz.DTypeError, match="high-ratio") as e:
                sz.compress(t, book)
            assert name in str(e.value) and "cpu()" in str(e.value)
        with pytest.raises(sz.DTypeError, match="high-ratio"):
            sz.compress(u8(t), dtype=name, mode="fast")
        with pytest.raises(sz.DTypeError, match="high-ratio"):  # refused before looking at the size
            sz.compress(torch.empty(0, dtype=dt, device="cuda"))


@pytest.mark.parametrize("name,dt,largest", FP8, ids=FP8_IDS)
def test_fp8_cpu_frames_decode_on_gpu(name, dt, largest):
    """fp8 frames the CPU wrote: high-ratio ones go to the GPU's fp8 decoder, however they arrive (bytes, a
    DeviceFrame, a bare CUDA buffer whose header is read back); checksummed ones and coded fast-mode ones
    (e5m2; e4m3's are raw) decode on the host and come over."""
    t = fp8_tiled(70_000, dt, largest)
    pinned = sz.CodeTable.calibrate([v.cpu() for v in fp8_kv(CALIBRATION, dt, largest).values()])
    for f in (sz.compress(t.cpu(), mode="high-ratio"), sz.compress(t.cpu(), pinned, mode="high-ratio")):
        assert f.mode == "high-ratio" and not f.is_raw and f.dtype == name
        out = torch.empty_like(t)
        sz.decompress(bytes(f), out=out)
        assert torch.equal(u8(out), u8(t))
        y = sz.decompress(f, device="cuda")
        assert y.is_cuda and y.dtype == dt and torch.equal(u8(y), u8(t))
        df = sz.DeviceFrame.from_host(f)
        assert df.mode == "high-ratio" and df.dtype == name
        assert torch.equal(u8(sz.decompress(df)), u8(t))
        assert torch.equal(u8(sz.decompress(df.data)), u8(t))  # bare: the header read back picks the kernel
        # Into a uint8 out (the cache's own view of its bytes).
        ob = torch.empty(t.numel(), dtype=torch.uint8, device="cuda")
        sz.decompress(df, out=ob)
        assert torch.equal(ob, u8(t))
    for f in (sz.compress(t.cpu(), mode="high-ratio", checksum=True), sz.compress(t.cpu(), "adaptive", mode="fast")):
        assert f.is_raw == (name == "fp8_e4m3" and f.mode == "fast"), f
        y = sz.decompress(bytes(f), device="cuda")
        assert y.is_cuda and y.dtype == dt and torch.equal(u8(y), u8(t)), f
        df = sz.DeviceFrame.from_host(f)
        assert torch.equal(u8(sz.decompress(df)), u8(t)), f


def test_fp8_gpu_errors_and_edges():
    e4m3 = fp8_tiled(10_000, torch.float8_e4m3fn, 448.0)
    e5m2 = fp8_tiled(10_000, torch.float8_e5m2, 57344.0)
    t_e4m3 = sz.CodeTable.calibrate(e4m3.cpu())
    with pytest.raises(sz.CodebookError, match="for fp8_e4m3, the tensor is fp8_e5m2"):
        sz.compress(e5m2, t_e4m3, mode="high-ratio")
    with pytest.raises(sz.CodebookError, match="for bf16, the tensor is fp8_e4m3"):
        sz.compress(e4m3, sz.CodeTable.default("bf16"), mode="high-ratio")
    with pytest.raises(sz.CodebookError, match="for fp8_e4m3, the tensor is bf16"):
        sz.compress(cuda_bf16(1000), t_e4m3, mode="high-ratio")
    with pytest.raises(sz.LayoutError, match="16-byte"):
        sz.compress(e4m3[1:], mode="high-ratio")
    with pytest.raises(sz.DTypeError, match="fp8_e4m3 and fp8_e5m2"):
        sz.compress(torch.zeros(16, dtype=torch.int8, device="cuda"), mode="high-ratio")
    # Empty tensors: the constant empty frame, made on the host, whatever the table.
    for dt in (torch.float8_e4m3fn, torch.float8_e5m2):
        for book in (None, "adaptive"):
            z = torch.empty((0, 8), dtype=dt, device="cuda")
            y = sz.decompress(sz.compress(z, book, mode="high-ratio"))
            assert y.is_cuda and y.dtype == dt and y.shape == (0, 8)
    # A non-default stream, the status read later; then a damaged magic.
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        df = sz.compress(e5m2, sz.CodeTable.calibrate(e5m2.cpu()), mode="high-ratio")
        status = torch.empty(1, dtype=torch.int32, device="cuda")
        y = sz.decompress(df, check=False, status=status)
    s.synchronize()
    sz.check_status(status)
    assert torch.equal(u8(y), u8(e5m2))
    df.buffer[0] ^= 0xFF
    with pytest.raises(sz.NotAFrameError):
        sz.decompress(df)
