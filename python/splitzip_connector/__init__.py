"""splitzip_connector: lossless compression of BF16 KV caches (SplitZip) for disaggregated LLM serving.

The codec is the Go core of SplitZip, compiled into this package (splitzip_connector._core); this module is
its Pythonic face on numpy arrays and torch tensors:

    >>> import numpy as np, splitzip_connector as sz
    >>> kv = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
    >>> frame = sz.compress(kv)                      # a Frame (host memory)
    >>> np.array_equal(sz.decompress(frame), kv)     # lossless
    True

bf16 data: torch.bfloat16 tensors, ml_dtypes.bfloat16 arrays, or uint16 arrays with dtype="bf16". CUDA
tensors are compressed on the GPU, on PyTorch's current stream (see splitzip_connector.cuda).

Two modes: "fast" (the default) and "high-ratio" (entropy-coded exponents, about 1.48x on real KV):

    >>> frame = sz.compress(kv, mode="high-ratio")   # each frame's own code table; or a CodeTable
    >>> frame.mode, np.array_equal(sz.decompress(frame), kv)
    ('high-ratio', True)

Errors are SplitZipError subclasses (splitzip_connector.errors) whose messages say what to change.

Modules, each importing only those before it: errors → _binding (the Go core) → dtypes → tensors → frame,
codebook → host, cuda (the CPU and GPU backends) → codec (compress/decompress, which picks a backend) →
handoff (the connector) → this package; vllm/ sits on top.
"""

from __future__ import annotations

from ._binding import FORMAT_VERSION, HEADER_SIZE, MODE_NAMES as MODES
from .codebook import Calibrator, Codebook, CodeTable
from .codec import compress, decompress, max_compressed_size
from .cuda import DeviceFrame, check_status, cuda_available, load_kernels
from . import errors
from .errors import (
    BufferSizeError,
    ChecksumError,
    CodebookError,
    ControlPlaneError,
    CorruptFrameError,
    CUDAError,
    CUDAUnavailableError,
    DTypeError,
    ExtensionNotBuiltError,
    FrameError,
    FrameVersionError,
    HandoffAccessError,
    HandoffBusyError,
    HandoffError,
    HandoffLayoutError,
    HandoffMismatchError,
    HandoffUnavailableError,
    LayoutError,
    NotAFrameError,
    SplitZipError,
    SplitZipIOError,
    TruncatedFrameError,
)
from .frame import Frame, FrameInfo, Header, inspect, split_frames

__version__ = "0.1.0"

__all__ = [
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MODES",
    "compress",
    "decompress",
    "max_compressed_size",
    "Codebook",
    "CodeTable",
    "Calibrator",
    "Frame",
    "FrameInfo",
    "Header",
    "DeviceFrame",
    "inspect",
    "split_frames",
    "cuda_available",
    "load_kernels",
    "check_status",
    *errors.__all__,
]

# KV handoffs between engines (splitzip_connector.handoff); the vLLM connector is splitzip_connector.vllm.
from .handoff import (  # noqa: E402
    Consumer,
    ControlPlane,
    Handoff,
    KVLayout,
    LoadFailure,
    Producer,
    endpoint_defaults,
    new_handoff_id,
    new_handoff_secret,
)

__all__ += [
    "ControlPlane", "Producer", "Consumer", "KVLayout", "Handoff", "LoadFailure", "new_handoff_id", "new_handoff_secret",
    "endpoint_defaults",
]
