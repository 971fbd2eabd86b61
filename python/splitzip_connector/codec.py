"""compress / decompress: tensors to frames and back, on numpy arrays and torch tensors (CPU and CUDA).

This module only dispatches: host tensors and frames go to the CPU backend (host), CUDA ones to the GPU
backend (cuda). Neither backend imports this module.
"""

from __future__ import annotations

from typing import Any

from ._binding import ext
from .codebook import Codebook, CodeTable, coding
from .cuda import DeviceFrame, compress_cuda, decompress_cuda
from .frame import Frame
from .host import compress_host, decompress_host
from .tensors import as_bytes, is_torch, np_addr, view

__all__ = ["compress", "decompress", "max_compressed_size"]


def max_compressed_size(nbytes: int) -> int:
    """The largest frame compress() writes for a tensor of nbytes bytes (the input plus a 64-byte header)."""
    return ext.pybind_MaxEncodedLen(nbytes)


def compress(
    tensor: Any,
    codebook: Codebook | CodeTable | str | None = None,
    *,
    dtype: Any = None,
    out: Any = None,
    mode: str = "fast",
    checksum: bool = False,
    table: CodeTable | None = None,
) -> Any:
    """Compresses a tensor losslessly into one SplitZip frame.

    tensor: a C-contiguous numpy array, a contiguous torch tensor (CPU or CUDA), or a bytes-like object.
        numpy has no bfloat16: pass bf16 data as ml_dtypes.bfloat16, or as a uint16 view with dtype="bf16".
    mode: "fast" (the default: 4-bit exponent codes, format version 1 frames, memory speed) or "high-ratio"
        (Huffman-coded exponents, version 2 frames: 1.48x on the real bf16 KV fixture against 1.33x, at a
        fraction of the fast mode's CPU speed; fp8_e4m3 is coded too). decompress() reads both.
    codebook: how exponents are coded.
        fast mode: a Codebook (e.g. Codebook.calibrate on your model's KV cache), "adaptive" (calibrate on this
        tensor; on a GPU that waits for its histogram), or None / "default" for the dtype's built-in codebook.
        high-ratio mode: a CodeTable (CodeTable.calibrate…; also as table=), "adaptive" (a table of this
        tensor's own exponents), or "default" (the built-in bf16/fp32 table). None is "adaptive" on the CPU
        (as Go's encoder does) and "default" on a GPU, where "adaptive" waits for the GPU (see
        splitzip_connector.cuda). On a GPU, fp8_e4m3 / fp8_e5m2 tensors are coded in the high-ratio mode only,
        and, having no built-in table, get their own for None / "default".
        Dtypes a mode does not code (ints; fp8_e4m3 in the fast mode) are carried verbatim.
    dtype: the element type when the array's own type does not say it ("bf16" for a uint16 view).
    out: for host tensors, a writable buffer (numpy uint8 array, bytearray, CPU uint8 tensor) of at least
        max_compressed_size(nbytes) bytes to write the frame into instead of a fresh array.
    checksum: store a CRC-32C of the payload in the frame (version 2), which decompress() checks (ChecksumError
        on a mismatch): for frames that go to files or through transports without a checksum of their own.
        CPU only.
    table: the high-ratio mode's CodeTable, as a keyword (instead of codebook).

    Returns a Frame (host memory) for host tensors. For CUDA tensors returns a DeviceFrame: the encode is
    queued on PyTorch's current stream and nothing waits for it; DeviceFrame.nbytes or .to_host() do.
    """
    v = view(tensor, dtype, what="tensor")
    if v.device >= 0:
        if out is not None:
            raise TypeError("out= is for host tensors; CUDA compress allocates its frame on the tensor's device")
        return compress_cuda(tensor, v, coding(codebook, table, mode, gpu=True), checksum)
    return compress_host(v, coding(codebook, table, mode), checksum, out)


def decompress(
    frame: Any,
    out: Any = None,
    *,
    shape: tuple[int, ...] | None = None,
    device: Any = None,
    check: bool = True,
    status: Any = None,
) -> Any:
    """Decompresses one frame.

    frame: a Frame, a DeviceFrame, or the frame's bytes (bytes-like, uint8 numpy array, uint8 torch tensor on
        the CPU or a GPU).
    out: where to write the tensor (numpy array or torch tensor, contiguous, writable, exactly the decoded
        size, of the frame's dtype or a same-size integer view such as uint16 for bf16). It is returned.
    shape, device: without out, the shape of the returned tensor (default: the source tensor's shape when the
        frame came from compress(), else 1-D) and where to allocate it: None gives numpy (torch when the frame
        came from a torch tensor), "cpu"/"cuda"/a torch.device a torch tensor there.
    check, status: CUDA only. check=True (default) waits for the decode and raises on a corrupt frame;
        check=False only queues it on PyTorch's current stream. status, a 1-element int32 CUDA tensor,
        receives the decode status; check_status(status) raises what it holds.

    Host frames decode on the CPU; a frame in GPU memory, or any frame with a CUDA out/device, on the GPU.
    """
    if type(frame) is Frame:
        data = frame.data
        fptr, flen, fdev = frame._ptr or np_addr(data), data.nbytes, -1
        src_shape, framework = frame.shape, frame.framework
    elif isinstance(frame, DeviceFrame):
        return decompress_cuda(frame, out, shape=shape, device=device, check=check, status=status)
    else:
        if isinstance(frame, Frame):
            frame = frame.data
        data, fptr, flen, fdev = as_bytes(frame)
        src_shape, framework = None, ("torch" if is_torch(frame) else None)
    if fdev >= 0 or (device is not None and str(device).startswith("cuda")) or (
        out is not None and is_torch(out) and out.is_cuda
    ):
        return decompress_cuda(frame, out, shape=shape, device=device, check=check, status=status)
    return decompress_host(data, fptr, flen, out, shape if shape is not None else src_shape, device, framework)
