"""The GPU path: CUDA tensors are compressed and decompressed by the Go core's CUDA kernels (kernels/),
launched on PyTorch's current stream with the tensors' device pointers. Nothing is copied through Python and
nothing waits for the GPU unless the caller asks (DeviceFrame.nbytes, to_host(), decompress(check=True)).

The kernels encode bf16 and decode bf16 frames (4-bit codes, the v1 layout) and raw frames of any dtype.
codec.compress / codec.decompress choose this backend for CUDA tensors and frames; call those.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import dtypes
from ._binding import HEADER_SIZE, ext
from .codebook import Codebook, codebook_handle
from .errors import (
    BufferSizeError,
    CUDAUnavailableError,
    DTypeError,
    LayoutError,
    translate,
)
from .frame import Frame, parse_header
from .host import compress_host
from .tensors import View, as_bytes, is_torch, np_addr, view

__all__ = ["DeviceFrame", "cuda_available", "load_kernels", "check_status"]


def _torch():
    try:
        import torch
    except ImportError:
        raise CUDAUnavailableError("splitzip: CUDA tensors need torch, which is not installed") from None
    return torch


def cuda_available() -> bool:
    """Whether the GPU path works here: torch sees a GPU and the Go core finds the CUDA driver."""
    try:
        import torch
    except ImportError:
        return False
    if not torch.cuda.is_available():
        return False
    try:
        return ext.pybind_CUDADeviceCount() > 0
    except RuntimeError:
        return False


def load_kernels(device: Any = None) -> None:
    """Loads (JIT-compiles on first use) the GPU kernels on a device ahead of the first call. Raises
    CUDAUnavailableError without a driver."""
    torch = _torch()
    ordinal = torch.device(device if device is not None else "cuda").index
    if ordinal is None:
        ordinal = torch.cuda.current_device()
    try:
        ext.pybind_CUDALoad(ordinal)
    except RuntimeError as e:
        raise translate(e) from None


def _stream(torch: Any, ordinal: int) -> int:
    return torch.cuda.current_stream(ordinal).cuda_stream


def check_status(status: Any) -> None:
    """Raises the error a GPU decode status tensor (decompress(..., check=False, status=s)) holds; waits for
    the decode to finish."""
    st = int(status.item())
    if st:
        raise translate(RuntimeError(ext.pybind_CUDAStatusError(st)))


class DeviceFrame:
    """A frame in GPU memory, produced by compress() on a CUDA tensor.

    buffer is a uint8 CUDA tensor of max_compressed_size(bytes) capacity whose first nbytes bytes are the frame;
    size is a 1-element int64 CUDA tensor the encoder writes the frame's length to. Reading nbytes, data or
    to_host() waits for the encode; decompress(device_frame) does not.
    """

    __slots__ = ("buffer", "size", "shape", "code")

    def __init__(self, buffer: Any, size: Any, shape: tuple[int, ...] | None, code: int) -> None:
        self.buffer = buffer
        self.size = size
        self.shape = shape
        self.code = code

    @property
    def device(self) -> Any:
        return self.buffer.device

    @property
    def dtype(self) -> str:
        return dtypes.dtype_name(self.code)

    @property
    def nbytes(self) -> int:
        """The frame's length (waits for the encode)."""
        return int(self.size.item())

    def __len__(self) -> int:
        return self.nbytes

    @property
    def data(self) -> Any:
        """The frame's bytes on the GPU: a view of buffer (waits for the encode to learn the length)."""
        return self.buffer[: self.nbytes]

    def to_host(self) -> Frame:
        """Copies the frame to host memory (waits for the encode)."""
        return Frame(self.data.cpu().numpy(), self.shape, "torch")

    @classmethod
    def from_host(cls, frame: Any, device: Any = "cuda") -> "DeviceFrame":
        """Copies a host frame (Frame or bytes-like) to a GPU."""
        torch = _torch()
        f = frame if isinstance(frame, Frame) else Frame(frame)
        f.validate()
        buf = _to_device(torch, f.data, device)
        size = torch.tensor([f.nbytes], dtype=torch.int64, device=buf.device)
        h = f.header
        return cls(buf, size, f.shape or (h.elements,), h.code)

    def __repr__(self) -> str:
        return f"DeviceFrame(dtype={self.dtype}, shape={self.shape}, capacity={self.buffer.numel()}, device={self.device})"


def _to_device(torch: Any, data: np.ndarray, device: Any) -> Any:
    """Copies host bytes to a device (a fresh, hence aligned, allocation)."""
    if not data.flags.writeable:  # torch.from_numpy warns about read-only arrays (frames from bytes)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(data).to(device)
    return torch.from_numpy(data).to(device)


def _aligned(ptr: int, what: str) -> None:
    if ptr % 16:
        raise LayoutError(
            f"{what} starts at an address that is not 16-byte aligned (the GPU kernels read 16 bytes at a time); "
            "pass x.clone(), which allocates aligned memory"
        )


def compress_cuda(tensor: Any, v: View, codebook: Codebook | str | None) -> DeviceFrame:
    """compress() for a CUDA tensor: queues the encode on the current stream and returns at once."""
    torch = _torch()
    if v.code != dtypes.BF16:
        raise DTypeError(
            f"GPU compress takes bf16 tensors, this one is {dtypes.dtype_name(v.code)}; "
            "compress tensor.cpu() instead (the CPU codec handles every dtype)"
        )
    cb = codebook_handle(codebook, refuse_adaptive="GPU compress")
    dev = tensor.device
    if v.nbytes == 0:  # nothing for a kernel to do: the (constant) empty frame, made on the host
        df = DeviceFrame.from_host(compress_host(view(tensor.cpu()), None), dev)
        df.shape = v.shape
        return df
    _aligned(v.ptr, "tensor")
    cap = ext.pybind_MaxEncodedLen(v.nbytes)
    buf = torch.empty(cap, dtype=torch.uint8, device=dev)
    size = torch.empty(1, dtype=torch.int64, device=dev)
    # The encoder's workspace must start zero (it leaves it ready for the next call).
    ws = torch.zeros(max(ext.pybind_CUDAEncodeWorkspaceSize(v.nbytes), 16), dtype=torch.uint8, device=dev)
    try:
        ext.pybind_CUDAEncode(
            v.device, _stream(torch, v.device), v.ptr, v.nbytes, cb, buf.data_ptr(), size.data_ptr(), ws.data_ptr()
        )
    except RuntimeError as e:
        raise translate(e) from None
    # ws goes back to PyTorch's caching allocator, which reuses it only in this stream's order.
    return DeviceFrame(buf, size, v.shape, v.code)


def decompress_cuda(
    frame: Any,
    out: Any = None,
    *,
    shape: tuple[int, ...] | None = None,
    device: Any = None,
    check: bool = True,
    status: Any = None,
) -> Any:
    """decompress() on a GPU: frame is a DeviceFrame, a uint8 CUDA tensor holding a frame, or a host frame
    (copied to the GPU first). out is a CUDA tensor, or one is allocated on `device` (default: the frame's).
    With check=False the decode is only queued; pass status= (a 1-element int32 CUDA tensor) and call
    check_status(status) later to learn whether the frame was valid."""
    torch = _torch()
    src_shape = None
    code = elements = None
    if isinstance(frame, DeviceFrame):
        src, cap, fdev = frame.buffer, frame.buffer.numel(), frame.buffer.device
        src_shape, code = frame.shape, frame.code
        if frame.shape is not None:
            elements = int(np.prod(frame.shape, dtype=np.int64))
    elif is_torch(frame) and frame.is_cuda:
        src, _ptr, cap, _ = as_bytes(frame)
        fdev = frame.device
    else:  # a host frame: validate and copy it over
        f = frame if isinstance(frame, Frame) else Frame(frame)
        f.validate()
        src_shape = f.shape
        h = f.header
        code, elements = h.code, h.elements
        target = out.device if out is not None else torch.device(device if device is not None else "cuda")
        src = _to_device(torch, f.data, target)
        cap, fdev = src.numel(), src.device
    if code is None or elements is None:  # a bare device buffer: read its header (waits for the copy)
        head = src[:HEADER_SIZE].cpu().numpy()
        h = parse_header(head)  # raises TruncatedFrameError for a buffer shorter than a header
        try:
            ext.pybind_FrameLen(np_addr(head), HEADER_SIZE)
        except RuntimeError as e:
            raise translate(e) from None
        code, elements = h.code, h.elements
    raw_len = elements * dtypes.dtype_size(code)
    if out is None:
        shp = shape if shape is not None else (src_shape if src_shape is not None else (elements,))
        if int(np.prod(shp, dtype=np.int64)) != elements:
            raise BufferSizeError(f"shape {tuple(shp)} holds {int(np.prod(shp))} elements, the frame {elements}")
        out = torch.empty(tuple(shp), dtype=dtypes.torch_dtype(code), device=device if device is not None else fdev)
    ov = view(out, None, writable=True, what="out")
    if ov.device < 0:
        raise LayoutError("out must be a CUDA tensor for a GPU decode")
    if out.device != fdev:
        src = src.to(out.device)
    if ov.code != code and dtypes.dtype_size(ov.code) != dtypes.dtype_size(code):
        raise DTypeError(f"out is {out.dtype}, the frame holds {dtypes.dtype_name(code)}")
    if ov.nbytes != raw_len:
        raise BufferSizeError(f"out holds {ov.nbytes} bytes, the frame decodes to {raw_len}")
    _aligned(src.data_ptr(), "frame")
    _aligned(ov.ptr, "out")
    if status is None:
        status = torch.empty(1, dtype=torch.int32, device=out.device)
    if raw_len == 0:  # an empty tensor: the header was checked on the host, nothing for a kernel to do
        status.zero_()
        return out
    try:
        ext.pybind_CUDADecode(
            ov.device, _stream(torch, ov.device), src.data_ptr(), cap, ov.ptr, ov.nbytes, status.data_ptr()
        )
    except RuntimeError as e:
        raise translate(e) from None
    if check:
        check_status(status)
    return out
