"""The GPU path on CUDA tensors: skipped without a GPU (conftest), run on the H100 machine.

Every frame the GPU writes must be byte-identical to the CPU codec's, and decode back bit-exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

import splitzip_connector as sz
from conftest import EVALUATION, bf16_randn

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
