// Package kernels is SplitZip's GPU codec: CUDA kernels that write and read exactly the frames of
// codec/FORMAT.md (bf16, 4-bit codes), launched through the run-time-loaded driver binding in kernels/cuda.
//
// Every call is stream-ordered and asynchronous: the caller owns all memory, passes the stream (PyTorch's
// current stream), and learns a frame's length or a decode's status from device memory by a stream-ordered
// copy. Nothing synchronises with the host, so the calls can be captured in a CUDA graph.
//
// The kernels are CUDA C (splitzip.cu, splitzip.cuh) compiled to PTX by `make -C kernels ptx`; the PTX is
// committed and embedded, and the driver JIT-compiles it for the GPU at hand: splitzip.ptx for sm_80 and
// newer, and on Hopper and newer splitzip_sm90.ptx, the same kernels with programmatic dependent launch.
// TestPTXUpToDate fails when the PTX is stale against its sources.
package kernels

import _ "embed"

//go:generate make ptx

//go:embed splitzip.ptx
var ptx []byte

//go:embed splitzip_sm90.ptx
var ptxSM90 []byte

//go:embed splitzip.sha256
var ptxHashes string
