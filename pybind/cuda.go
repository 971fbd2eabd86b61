package pybind

import (
	"errors"
	"fmt"
	"sync"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/kernels"
	"github.com/splitzip/splitzip/kernels/cuda"
)

// The GPU path: PyTorch's device pointers and current stream go straight to the kernels package. Nothing here
// synchronises with the host; lengths and decode status land in device memory the caller owns.

// gpu is the loaded kernels of one device, in its primary context (the one PyTorch uses).
type gpu struct {
	once  sync.Once
	codec *kernels.Codec
	err   error
}

var (
	gpusMu sync.Mutex
	gpus   = map[int]*gpu{}
)

func init() {
	extraKinds = append(extraKinds, func(err error) string {
		if errors.Is(err, kernels.ErrAlignment) {
			return KindAlignment
		}
		return ""
	})
}

// gpuCodec returns the kernels loaded into device ordinal's primary context, loading them on first use.
func gpuCodec(ordinal int) (*kernels.Codec, error) {
	gpusMu.Lock()
	g, ok := gpus[ordinal]
	if !ok {
		g = &gpu{}
		gpus[ordinal] = g
	}
	gpusMu.Unlock()
	g.once.Do(func() {
		ctx, err := cuda.PrimaryContext(ordinal)
		if err != nil {
			g.err = err
			return
		}
		g.codec, g.err = kernels.NewCodec(ctx)
		if g.err != nil {
			ctx.Close()
		}
	})
	return g.codec, g.err
}

// CUDADeviceCount returns the number of CUDA devices; the error names why there are none (no driver…).
func CUDADeviceCount() (n int, err error) {
	defer recoverInto(&err)
	n, err = cuda.DeviceCount()
	return n, wrap(err)
}

// CUDALoad loads the GPU kernels into device ordinal's primary context, so that the first compress does not pay
// for it (on GPUs other than compute capability 9.0 the driver JIT-compiles them at first use). It returns the
// ordinal.
func CUDALoad(ordinal int) (n int, err error) {
	defer recoverInto(&err)
	if _, err := gpuCodec(ordinal); err != nil {
		return 0, wrap(err)
	}
	return ordinal, nil
}

// CUDAEncodeWorkspaceSize is the device workspace CUDAEncode needs for srcLen bytes of input. It must be zero
// before its first use (torch.zeros); each encode leaves it ready for the next one on the same stream.
func CUDAEncodeWorkspaceSize(srcLen int) int { return kernels.EncodeWorkspaceSize(srcLen) }

// CUDAEncode enqueues on stream (a CUstream handle: torch.cuda.current_stream().cuda_stream; 0 is the legacy
// default stream) of device ordinal the encoding of the bf16 tensor of srcLen bytes at device address src
// into one frame at dst (room for MaxEncodedLen(srcLen) bytes). The frame's length is written to sizeOut as
// a little-endian uint64; ws is CUDAEncodeWorkspaceSize(srcLen) bytes of zeroed device memory, busy until
// the stream passes this call. codebook is 0 (the built-in bf16 codebook) or a codebook handle. src and dst must
// be 16-byte aligned. It returns srcLen; nothing waits for the device.
func CUDAEncode(ordinal int, stream uintptr, src uintptr, srcLen int, codebook int, dst, sizeOut, ws uintptr) (n int, err error) {
	defer recoverInto(&err)
	var cb *codec.Codebook
	if codebook == 0 {
		cb, err = codec.DefaultCodebook(codec.BF16)
	} else {
		cb, err = codebooks.get(codebook)
	}
	if err != nil {
		return 0, wrap(err)
	}
	if cb.DType != codec.BF16 {
		return 0, wrap(fmt.Errorf("%w: the GPU encoder takes bf16 codebooks, this one is for %s", codec.ErrCodebook, cb.DType))
	}
	c, err := gpuCodec(ordinal)
	if err != nil {
		return 0, wrap(err)
	}
	s := c.Context().StreamFromHandle(stream)
	err = c.EncodeAsync(s, cuda.DevicePtr(src), srcLen, cb, cuda.DevicePtr(dst), cuda.DevicePtr(sizeOut), cuda.DevicePtr(ws))
	if err != nil {
		return 0, wrap(err)
	}
	return srcLen, nil
}

// CUDADecode enqueues on stream of device ordinal the decoding of the fast-mode (or raw) frame at device
// address src (frameCap bytes readable; the frame may be shorter) into the dstLen bytes at dst, exactly the frame's decoded size.
// A status word (0 when the frame decoded; see CUDAStatusError) is written to status as a little-endian
// uint32. src and dst must be 16-byte aligned. It returns dstLen; nothing waits for the device.
func CUDADecode(ordinal int, stream uintptr, src uintptr, frameCap int, dst uintptr, dstLen int, status uintptr) (n int, err error) {
	defer recoverInto(&err)
	c, err := gpuCodec(ordinal)
	if err != nil {
		return 0, wrap(err)
	}
	s := c.Context().StreamFromHandle(stream)
	if err := c.DecodeAsync(s, cuda.DevicePtr(src), frameCap, cuda.DevicePtr(dst), dstLen, cuda.DevicePtr(status)); err != nil {
		return 0, wrap(err)
	}
	return dstLen, nil
}

// CUDAHighRatioWorkspaceSize is the device workspace CUDAEncodeHighRatio needs for srcLen bytes of input (the
// call zeroes it itself).
func CUDAHighRatioWorkspaceSize(srcLen int) int { return kernels.HighRatioWorkspaceSize(srcLen) }

// CUDAEncodeHighRatio enqueues on stream of device ordinal the encoding of the bf16 tensor of srcLen bytes at
// device address src into one high-ratio (format version 2) frame at dst (room for MaxEncodedLen(srcLen)
// bytes), byte for byte the frame the CPU encoder writes with the same code table. table is tableLen bytes of
// device memory holding a bf16 code table as frames carry it (CodeTableBinary), busy until the stream passes
// this call. The frame's length is written to sizeOut as a little-endian uint64; ws is
// CUDAHighRatioWorkspaceSize(srcLen) bytes of device memory. src and dst must be 16-byte aligned. It returns
// srcLen; nothing waits for the device.
func CUDAEncodeHighRatio(ordinal int, stream uintptr, src uintptr, srcLen int, table uintptr, tableLen int, dst, sizeOut, ws uintptr) (n int, err error) {
	return CUDAEncodeHighRatioDType(ordinal, stream, int(codec.BF16), src, srcLen, table, tableLen, dst, sizeOut, ws)
}

// CUDADecodeHighRatio is CUDADecode for high-ratio frames (the entropy flag set; raw frames decode too): bf16,
// without a payload checksum.
func CUDADecodeHighRatio(ordinal int, stream uintptr, src uintptr, frameCap int, dst uintptr, dstLen int, status uintptr) (n int, err error) {
	return CUDADecodeHighRatioDType(ordinal, stream, int(codec.BF16), src, frameCap, dst, dstLen, status)
}

// gpuHighRatioDType returns the dtype of code dtype if the GPU high-ratio kernels code it (bf16, fp8_e4m3,
// fp8_e5m2), so that a bad dtype fails before the kernels are loaded.
func gpuHighRatioDType(dtype int) (codec.DType, error) {
	dt, err := dtypeOf(dtype)
	if err != nil {
		return 0, err
	}
	if err := kernels.CheckHighRatioDType(dt); err != nil {
		return 0, wrap(err)
	}
	return dt, nil
}

// CUDAHighRatioDTypeWorkspaceSize is the device workspace CUDAEncodeHighRatioDType needs for srcLen bytes of
// input of dtype code dtype (bf16, fp8_e4m3 or fp8_e5m2; others get a dtype error).
func CUDAHighRatioDTypeWorkspaceSize(dtype int, srcLen int) (n int, err error) {
	dt, err := gpuHighRatioDType(dtype)
	if err != nil {
		return 0, err
	}
	return kernels.HighRatioDTypeWorkspaceSize(dt, srcLen), nil
}

// CUDAEncodeHighRatioDType is CUDAEncodeHighRatio for a tensor of dtype code dtype: bf16, fp8_e4m3 or
// fp8_e5m2 (others get a dtype error before anything is loaded). table holds a code table of that dtype as
// frames carry it (11 bytes at most for fp8_e4m3, 19 for fp8_e5m2); ws is
// CUDAHighRatioDTypeWorkspaceSize(dtype, srcLen) bytes. The frame is byte for byte the CPU encoder's for the same
// input, dtype and code table. It returns srcLen; nothing waits for the device.
func CUDAEncodeHighRatioDType(ordinal int, stream uintptr, dtype int, src uintptr, srcLen int, table uintptr, tableLen int, dst, sizeOut, ws uintptr) (n int, err error) {
	defer recoverInto(&err)
	dt, err := gpuHighRatioDType(dtype)
	if err != nil {
		return 0, err
	}
	c, err := gpuCodec(ordinal)
	if err != nil {
		return 0, wrap(err)
	}
	s := c.Context().StreamFromHandle(stream)
	err = c.EncodeHighRatioDTypeAsync(s, dt, cuda.DevicePtr(src), srcLen, cuda.DevicePtr(table), tableLen, cuda.DevicePtr(dst), cuda.DevicePtr(sizeOut), cuda.DevicePtr(ws))
	if err != nil {
		return 0, wrap(err)
	}
	return srcLen, nil
}

// CUDADecodeHighRatioDType is CUDADecodeHighRatio into a tensor of dtype code dtype (bf16, fp8_e4m3 or
// fp8_e5m2; others get a dtype error before anything is loaded): it decodes high-ratio frames of that dtype and
// raw frames of dstLen bytes. A high-ratio frame of another dtype ends with an unsupported status.
func CUDADecodeHighRatioDType(ordinal int, stream uintptr, dtype int, src uintptr, frameCap int, dst uintptr, dstLen int, status uintptr) (n int, err error) {
	defer recoverInto(&err)
	dt, err := gpuHighRatioDType(dtype)
	if err != nil {
		return 0, err
	}
	c, err := gpuCodec(ordinal)
	if err != nil {
		return 0, wrap(err)
	}
	s := c.Context().StreamFromHandle(stream)
	if err := c.DecodeHighRatioDTypeAsync(s, dt, cuda.DevicePtr(src), frameCap, cuda.DevicePtr(dst), dstLen, cuda.DevicePtr(status)); err != nil {
		return 0, wrap(err)
	}
	return dstLen, nil
}

// CUDAStatusError returns the error a GPU decode status word stands for ("" for success), with its kind
// prefix as in the errors this package returns.
func CUDAStatusError(status int) string {
	err := wrap(kernels.StatusError(uint32(status)))
	if err == nil {
		return ""
	}
	return err.Error()
}
