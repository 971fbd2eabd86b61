// Package kernels is SplitZip's GPU codec: CUDA kernels that write and read exactly the frames of
// codec/FORMAT.md (bf16, 4-bit codes), launched through the run-time-loaded driver binding in kernels/cuda.
//
// Every call is stream-ordered and asynchronous: the caller owns all memory, passes the stream (PyTorch's
// current stream), and learns a frame's length or a decode's status from device memory by a stream-ordered
// copy. Nothing synchronises with the host, so the calls can be captured in a CUDA graph.
//
// The kernels are CUDA C (splitzip.cu with its entry points; format.cuh, device.cuh, encode.cuh,
// encode_tile.cuh, encode_stream.cuh, raw.cuh, decode.cuh, entropy.cuh, crc.cuh and blocks.cuh) compiled to PTX
// by `make -C kernels ptx` with nvcc 13.0.88 (`make -C kernels nvcc` installs it from PyPI). The PTX is
// generated, committed and embedded: splitzip.ptx for sm_80 and newer, and on Hopper and newer splitzip_sm90.ptx,
// the same kernels with programmatic dependent launch. The driver JIT-compiles the PTX for the GPU at hand,
// except on compute capability 9.0 (H100, H200), which loads splitzip_sm90.cubin, the sm_90 build compiled
// ahead by ptxas. TestPTXUpToDate fails when the PTX or the cubin is stale against its sources. Measurements of
// the kernels are in docs/gpu-kernels.md; internal/gpubench times them (splitzip bench -gpu), and WithPTX loads
// PTX built elsewhere to compare a change.
package kernels

import _ "embed"

//go:generate make ptx

//go:embed splitzip.ptx
var ptx []byte

//go:embed splitzip_sm90.ptx
var ptxSM90 []byte

// cubinSM90 is ptxSM90 compiled for sm_90: a fresh Hopper machine loads it in milliseconds where the driver
// takes seconds to JIT the PTX (then caches the result per user, which containers often lose).
//
//go:embed splitzip_sm90.cubin
var cubinSM90 []byte

//go:embed splitzip.sha256
var ptxHashes string
