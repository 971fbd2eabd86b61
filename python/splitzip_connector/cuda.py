"""The GPU path: CUDA tensors are compressed and decompressed by the Go core's CUDA kernels (kernels/),
launched on PyTorch's current stream with the tensors' device pointers. Nothing is copied through Python and
nothing waits for the GPU unless the caller asks (DeviceFrame.nbytes, to_host(), decompress(check=True),
compress(..., "adaptive")).

The kernels encode bf16 tensors in both modes and fp8_e4m3 / fp8_e5m2 tensors (torch.float8_e4m3fn,
torch.float8_e5m2, or uint8 tensors with dtype=) in the high-ratio mode, byte for byte as the CPU codec does
with the same codebook or code table; fp8 in the fast mode is refused (DTypeError): there is no fast-mode fp8
kernel. They decode bf16 frames of both modes, high-ratio fp8 frames and raw frames of any dtype. Payload
checksums are CPU-only: the GPU encoders write none, and a frame with one, or another coded frame (fp16, fp32,
a fast-mode fp8_e5m2 frame the CPU wrote), is decoded on the CPU (a frame in device memory is copied to the
host first) and the tensor copied to the GPU. codec.compress / codec.decompress choose this backend for CUDA
tensors and frames; call those.

High-ratio code tables on the GPU. The encoder reads its table from device memory:
- a CodeTable (pinned) of the tensor's dtype is copied to each device once, on its first use there (which
  waits for that copy), and kept with it;
- None or "default" is the dtype's built-in table (CodeTable.default(): bf16 has one), likewise copied once
  per device. fp8 has none: None gives an fp8 tensor its own table, as "adaptive" does, and waits as it does;
  "default" raises CodebookError, as on the CPU;
- "adaptive" learns the tensor's own table: the exponent field's histogram is counted on the GPU with torch
  (the exponents extracted to a uint8 tensor, then torch.bincount: a few element-wise passes over the tensor
  before the encode's own, and 3 bytes an element of temporaries for bf16, 1 for fp8, freed at once), its
  counts (256 for bf16, 16 for fp8_e4m3, 32 for fp8_e5m2) come to the host — so compress waits for the stream
  up to that point — the Go core builds the table from them (microseconds), and the table (at most 131 bytes;
  11 for fp8_e4m3, 19 for fp8_e5m2) goes back. The frame is then byte for byte the CPU encoder's with
  CodeTable.calibrate(tensor). Use a pinned table, or bf16's built-in one, where compress must not wait.

In the fast mode "adaptive" works the same way: the histogram counted on the GPU, the codebook calibrated from
it by the Go core (Codebook.from_counts), the frame byte for byte the CPU's compress(tensor.cpu(), "adaptive").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import dtypes
from ._binding import HEADER_SIZE, MODE_FAST, MODE_HIGH_RATIO, MODE_NAMES, ext
from .codebook import Codebook, CodeTable, Coding, coding
from .errors import (
    BufferSizeError,
    CodebookError,
    CUDAUnavailableError,
    DTypeError,
    LayoutError,
    TruncatedFrameError,
    translate,
)
from .frame import Frame, parse_header
from .host import compress_host, decompress_host
from .tensors import View, as_bytes, is_torch, np_addr, view

__all__ = ["DeviceFrame", "cuda_available", "load_kernels", "check_status"]


# The dtypes the GPU high-ratio kernels code, and where each one's exponent field lies in an element: (lowest bit,
# width), as the Go codec's histogram counts it (codec/dtype.go).
_EXPONENT_FIELD = {dtypes.BF16: (7, 8), dtypes.FP8_E4M3: (3, 4), dtypes.FP8_E5M2: (2, 5)}


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
    """Loads the GPU kernels on a device ahead of the first call (H100 and H200 load machine code; other GPUs
    JIT-compile PTX on first use, seconds, then cached by the driver). Raises CUDAUnavailableError without a
    driver."""
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
    size is a 1-element int64 CUDA tensor the encoder writes the frame's length to. mode is the mode it was
    encoded in ("fast" or "high-ratio") and code its dtype's format code, which together pick the GPU decoder
    (and, for high-ratio frames, the dtype's kernel) without reading the header back. Reading
    nbytes, data or to_host() waits for the encode; decompress(device_frame) does not.
    """

    __slots__ = ("buffer", "size", "shape", "code", "_mode", "_keep", "_host_only")

    def __init__(
        self, buffer: Any, size: Any, shape: tuple[int, ...] | None, code: int, mode: int = MODE_FAST, _keep: Any = None
    ) -> None:
        self.buffer = buffer
        self.size = size
        self.shape = shape
        self.code = code
        self._mode = mode
        self._keep = _keep  # device memory the queued encode still reads (its code table)
        self._host_only = False  # a frame the GPU decoders do not read (from_host of one); decoded on the CPU

    @property
    def mode(self) -> str:
        """"fast" or "high-ratio": the mode the frame was encoded in (a raw fallback frame decodes either way)."""
        return MODE_NAMES[self._mode]

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
        df = cls(buf, size, f.shape or (h.elements,), h.code, _mode_code(h))
        df._host_only = not _gpu_reads(h)
        return df

    def __repr__(self) -> str:
        return (
            f"DeviceFrame(dtype={self.dtype}, mode={self.mode}, shape={self.shape}, capacity={self.buffer.numel()}, "
            f"device={self.device})"
        )


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


def compress_cuda(tensor: Any, v: View, c: Coding, checksum: bool = False) -> DeviceFrame:
    """compress() for a CUDA tensor: queues the encode on the current stream and returns at once (after the
    histogram's trip to the host for an "adaptive" high-ratio table; see the module's notes)."""
    torch = _torch()
    if checksum:
        raise ValueError(
            "checksum=True: the GPU encoders write frames without a payload checksum; compress tensor.cpu() for "
            "a checksummed frame (a transport with its own checksum needs none)"
        )
    name = dtypes.dtype_name(v.code)
    if v.code not in _EXPONENT_FIELD:
        raise DTypeError(
            f"GPU compress takes bf16 tensors (and fp8_e4m3 and fp8_e5m2 ones in the high-ratio mode), this one is "
            f"{name}; compress tensor.cpu() instead (the CPU codec handles every dtype)"
        )
    if c.mode == MODE_FAST and v.code != dtypes.BF16:
        raise DTypeError(
            f"the GPU codes {name} tensors in the high-ratio mode only (the fast-mode kernels code bf16): pass "
            "mode='high-ratio', or compress tensor.cpu() for a fast-mode frame"
        )
    dev = tensor.device
    if v.nbytes == 0:  # nothing for a kernel to do: the (constant) empty frame, made on the host
        if c.mode == MODE_HIGH_RATIO and not c.adaptive and c.table is None and _default_table(v.code, c) is None:
            c = coding("adaptive", None, MODE_NAMES[MODE_HIGH_RATIO])  # no built-in table: the tensor's own
        df = DeviceFrame.from_host(compress_host(view(tensor.cpu(), v.code), c), dev)
        df.shape = v.shape
        return df
    _aligned(v.ptr, "tensor")
    cap = ext.pybind_MaxEncodedLen(v.nbytes)
    buf = torch.empty(cap, dtype=torch.uint8, device=dev)
    size = torch.empty(1, dtype=torch.int64, device=dev)
    stream = _stream(torch, v.device)
    if c.mode == MODE_HIGH_RATIO:
        table = _device_table(torch, tensor, v, c)
        # The encoder zeroes its workspace itself.
        try:
            wsn = ext.pybind_CUDAHighRatioDTypeWorkspaceSize(v.code, v.nbytes)
            ws = torch.empty(max(wsn, 16), dtype=torch.uint8, device=dev)
            ext.pybind_CUDAEncodeHighRatioDType(
                v.device, stream, v.code, v.ptr, v.nbytes, table.data_ptr(), table.numel(), buf.data_ptr(),
                size.data_ptr(), ws.data_ptr(),
            )
        except RuntimeError as e:
            raise translate(e) from None
        return DeviceFrame(buf, size, v.shape, v.code, MODE_HIGH_RATIO, table)
    book, own = c.book, None
    if c.adaptive:  # the codebook is read when the encode is queued: own may go once the call returns
        own = Codebook.from_counts(_exponent_counts(torch, tensor), dtypes.BF16)
        book = own.handle
    # The fast encoder's workspace must start zero (it leaves it ready for the next call).
    ws = torch.zeros(max(ext.pybind_CUDAEncodeWorkspaceSize(v.nbytes), 16), dtype=torch.uint8, device=dev)
    try:
        ext.pybind_CUDAEncode(v.device, stream, v.ptr, v.nbytes, book, buf.data_ptr(), size.data_ptr(), ws.data_ptr())
    except RuntimeError as e:
        raise translate(e) from None
    # ws goes back to PyTorch's caching allocator, which reuses it only in this stream's order.
    return DeviceFrame(buf, size, v.shape, v.code)


_DEFAULT_TABLES: dict[int, CodeTable | None] = {}  # dtype code → its built-in table (None: it has none)


def _default_table(code: int, c: Coding) -> CodeTable | None:
    """The built-in code table of a dtype the GPU codes, made on first use. A dtype without one (fp8) gets
    None where no codebook was named (the tensor's own table then), and CodebookError for an explicit
    "default", as on the CPU."""
    if code not in _DEFAULT_TABLES:
        try:
            t: CodeTable | None = CodeTable.default(code)
        except CodebookError:
            if code == dtypes.BF16:  # bf16 always has one
                raise
            t = None
        _DEFAULT_TABLES[code] = t
    t = _DEFAULT_TABLES[code]
    if t is None and not c.implicit:
        raise CodebookError(
            f"splitzip: {dtypes.dtype_name(code)} has no built-in code table: pass codebook='adaptive' (the "
            "tensor's own) or a CodeTable of that dtype"
        )
    return t


def _device_table(torch: Any, tensor: Any, v: View, c: Coding) -> Any:
    """The code table of a high-ratio encode of a tensor of dtype v.code, in device memory on the tensor's
    device (a uint8 tensor): the given one, the dtype's built-in one, or the tensor's own ("adaptive", and the
    default of a dtype without a built-in table)."""
    if c.adaptive:
        return _tensor_table(torch, tensor, v.code)
    t = c.table
    if t is None:
        t = _default_table(v.code, c)
        if t is None:
            return _tensor_table(torch, tensor, v.code)
    if t.dtype != dtypes.dtype_name(v.code):
        raise CodebookError(f"splitzip: the code table is for {t.dtype}, the tensor is {dtypes.dtype_name(v.code)}")
    dt = t._on_device.get(v.device)
    if dt is None:  # once per table and device
        dt = _to_device(torch, np.frombuffer(t.to_bytes(), np.uint8).copy(), tensor.device)
        t._on_device[v.device] = dt
    # The table outlives this call with the CodeTable, and other streams may use it: tell the caching allocator.
    dt.record_stream(torch.cuda.current_stream(v.device))
    return dt


def _exponent_counts(torch: Any, tensor: Any, code: int = dtypes.BF16) -> np.ndarray:
    """The histogram of the exponent field of a tensor of dtype code (bf16, fp8_e4m3 or fp8_e5m2), counted
    where the tensor lies (on the GPU for a CUDA tensor; then it waits for the stream): counts[x] is how many
    elements have exponent field value x, as the Go codec's Histogram counts them."""
    shift, width = _EXPONENT_FIELD[code]
    mask = (1 << width) - 1
    # uint8 input spares bincount a pass that checks for negative values.
    if code == dtypes.BF16:  # bits 7-14
        exps = ((tensor.reshape(-1).view(torch.int16) >> shift) & mask).to(torch.uint8)
    else:  # one byte an element: e4m3 bits 3-6, e5m2 bits 2-6
        exps = tensor.reshape(-1).view(torch.uint8) >> shift
        exps.bitwise_and_(mask)
    return torch.bincount(exps, minlength=mask + 1).cpu().numpy()


def _tensor_table(torch: Any, tensor: Any, code: int = dtypes.BF16) -> Any:
    """The tensor's own code table, learned from its exponent histogram counted on the GPU (see the module's
    notes for the cost)."""
    table = np.frombuffer(CodeTable.bytes_from_counts(_exponent_counts(torch, tensor, code), code), np.uint8).copy()
    return _to_device(torch, table, tensor.device)


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
    check_status(status) later to learn whether the frame was valid.

    The decoder is the frame's mode's: a DeviceFrame knows it, a host frame's header says it, and a bare CUDA
    buffer's header is read back first (which waits for the stream); a high-ratio frame goes to its dtype's
    kernel. A frame the GPU decoders do not read (a payload checksum; a coded dtype other than bf16, save
    high-ratio fp8 frames) is decoded on the CPU, its checksum checked, and the tensor copied over; that waits
    for the copies."""
    torch = _torch()
    src_shape = None
    code = elements = None
    mode = MODE_FAST
    if isinstance(frame, DeviceFrame):
        if frame._host_only:
            return _decompress_on_host(torch, frame.to_host(), out, shape, device or frame.device, status)
        src, cap, fdev = frame.buffer, frame.buffer.numel(), frame.buffer.device
        src_shape, code, mode = frame.shape, frame.code, frame._mode
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
        if not _gpu_reads(h):
            return _decompress_on_host(torch, f, out, shape, device, status)
        code, elements, mode = h.code, h.elements, _mode_code(h)
        target = out.device if out is not None else torch.device(device if device is not None else "cuda")
        src = _to_device(torch, f.data, target)
        cap, fdev = src.numel(), src.device
    if code is None or elements is None:  # a bare device buffer: read its header (waits for the copy)
        head = src[:HEADER_SIZE].cpu().numpy()
        h = parse_header(head)  # raises TruncatedFrameError for a buffer shorter than a header
        try:
            flen = ext.pybind_FrameLen(np_addr(head), HEADER_SIZE)
        except RuntimeError as e:
            raise translate(e) from None
        if not _gpu_reads(h):
            if flen > cap:
                raise TruncatedFrameError(f"splitzip: the buffer holds {cap} bytes, the frame is {flen}")
            f = Frame(src[:flen].cpu().numpy())
            return _decompress_on_host(torch, f, out, shape, device or fdev, status)
        code, elements, mode = h.code, h.elements, _mode_code(h)
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
    stream = _stream(torch, ov.device)
    try:
        if mode == MODE_HIGH_RATIO:  # the frame's dtype's kernel (it reads raw frames too)
            ext.pybind_CUDADecodeHighRatioDType(
                ov.device, stream, code, src.data_ptr(), cap, ov.ptr, ov.nbytes, status.data_ptr()
            )
        else:
            ext.pybind_CUDADecode(ov.device, stream, src.data_ptr(), cap, ov.ptr, ov.nbytes, status.data_ptr())
    except RuntimeError as e:
        raise translate(e) from None
    if check:
        check_status(status)
    return out


def _mode_code(h: Any) -> int:
    """The mode code of a frame header (frame.Header)."""
    return MODE_HIGH_RATIO if h.mode == MODE_NAMES[MODE_HIGH_RATIO] else MODE_FAST


def _gpu_reads(h: Any) -> bool:
    """Whether the GPU decoders read a frame with header h, if it has no payload checksum: raw frames, bf16
    frames of either mode, and high-ratio frames of the fp8 dtypes."""
    if h.checksum:
        return False
    return h.raw or h.code == dtypes.BF16 or (_mode_code(h) == MODE_HIGH_RATIO and h.code in _EXPONENT_FIELD)


def _decompress_on_host(torch: Any, f: Frame, out: Any, shape: Any, device: Any, status: Any) -> Any:
    """decompress_cuda of a host frame the GPU decoders do not read: decoded on the CPU (its checksum
    checked), then copied to the GPU (waiting for the copy)."""
    data = f.data
    if out is not None:
        if view(out, None, writable=True, what="out").device < 0:
            raise LayoutError("out must be a CUDA tensor for a GPU decode")
        host = torch.empty(tuple(out.shape), dtype=out.dtype)
        decompress_host(data, np_addr(data), data.nbytes, host, None, None, None)
        out.copy_(host)
    else:
        target = torch.device(device if device is not None else "cuda")
        host = decompress_host(data, np_addr(data), data.nbytes, None, shape if shape is not None else f.shape, "cpu", "torch")
        out = host.to(target)
    if status is not None:
        status.zero_()
    return out
