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
    with pytest.raises(ValueError, match="adaptive"):
        sz.compress(t, "adaptive")
    with pytest.raises(sz.BufferSizeError):
        sz.decompress(sz.compress(t), out=torch.empty(999, dtype=torch.bfloat16, device="cuda"))


def test_load_kernels():
    sz.load_kernels()
    sz.load_kernels("cuda:0")
