package kernels

import (
	"errors"
	"fmt"
	"math"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/kernels/cuda"
)

// Format-v1 constants the kernels are built for (splitzip.cuh).
const (
	headerSize   = codec.HeaderSize
	chunkElems   = 1 << codec.DefaultChunk // 4,096
	codebookLen  = 16
	escapeSize   = 3
	rawGridLimit = 4 * 132 // blocks of the raw fallback kernel, which strides over the chunks
)

// ErrAlignment is returned when a device pointer or stride the kernels access with 16-byte vectors is not
// 16-byte aligned.
var ErrAlignment = errors.New("splitzip: GPU buffers must be 16-byte aligned")

// Option configures a Codec.
type Option func(*options) error

type options struct{ threads int }

// WithBlockSize picks the kernels' thread-block size: 128, 256 (default) or 512 threads, each block coding
// one 4,096-element chunk.
func WithBlockSize(threads int) Option {
	return func(o *options) error {
		switch threads {
		case 128, 256, 512:
			o.threads = threads
			return nil
		}
		return fmt.Errorf("%w: block size %d (128, 256 or 512)", codec.ErrOption, threads)
	}
}

// Codec holds the loaded kernels of one context. Its methods only enqueue work, and may be called from any
// goroutine and on several streams at once: all per-call state lives in the caller's buffers.
type Codec struct {
	ctx     *cuda.Context
	mod     *cuda.Module
	threads int

	encDense, encPaged *cuda.Function
	rawDense, rawPaged *cuda.Function
	decDense, decPaged *cuda.Function
	noop               *cuda.Function
}

// NewCodec loads the kernels into ctx (the driver JIT-compiles the embedded PTX on first load; the driver
// caches the result).
func NewCodec(ctx *cuda.Context, opts ...Option) (*Codec, error) {
	o := options{threads: 256}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	mod, err := ctx.LoadModule(ptx)
	if err != nil {
		return nil, fmt.Errorf("splitzip: load GPU kernels: %w", err)
	}
	c := &Codec{ctx: ctx, mod: mod, threads: o.threads}
	t := fmt.Sprintf("t%d", o.threads)
	for _, k := range []struct {
		dst  **cuda.Function
		name string
	}{
		{&c.encDense, "sz_encode_" + t + "_dense"}, {&c.encPaged, "sz_encode_" + t + "_paged"},
		{&c.rawDense, "sz_raw_t256_dense"}, {&c.rawPaged, "sz_raw_t256_paged"},
		{&c.decDense, "sz_decode_" + t + "_dense"}, {&c.decPaged, "sz_decode_" + t + "_paged"},
		{&c.noop, "sz_noop"},
	} {
		if *k.dst, err = mod.Function(k.name); err != nil {
			mod.Close()
			return nil, err
		}
	}
	return c, nil
}

// Close unloads the kernels.
func (c *Codec) Close() error { return c.mod.Close() }

// Context returns the codec's context.
func (c *Codec) Context() *cuda.Context { return c.ctx }

// BlockSize returns the kernels' threads per block.
func (c *Codec) BlockSize() int { return c.threads }

// MaxEncodedLen is the largest frame for srcLen bytes of input (codec.MaxEncodedLen).
func MaxEncodedLen(srcLen int) int { return codec.MaxEncodedLen(srcLen) }

func chunksOf(n uint64) uint64 { return (n + chunkElems - 1) / chunkElems }

func align16(x uint64) uint64 { return (x + 15) &^ 15 }

// escapesOffset is where the escapes of a coded bf16 frame of n elements start (codec's Layout.Escapes).
func escapesOffset(n uint64) uint64 {
	table := align16(headerSize + codebookLen)
	codes := align16(table + 4*chunksOf(n))
	res := align16(codes + (n+1)/2)
	return align16(res + n)
}

// EncodeWorkspaceSize is the workspace EncodeAsync needs for srcLen bytes of input.
func EncodeWorkspaceSize(srcLen int) int { return workspaceSize(1, chunksOf(uint64(srcLen/2))) }

func workspaceSize(frames, chunks uint64) int { return int(8 * (frames + frames*chunks)) }

func aligned(p cuda.DevicePtr) bool { return p%16 == 0 }

// codebookWords packs a bf16 4-bit codebook for the kernels.
func codebookWords(cb *codec.Codebook) ([4]uint32, error) {
	var w [4]uint32
	if cb == nil || cb.DType != codec.BF16 || cb.Bits != 4 || len(cb.Exponents) != codebookLen {
		return w, fmt.Errorf("%w: the GPU encoder takes bf16 codebooks of 4-bit codes", codec.ErrCodebook)
	}
	for k, x := range cb.Exponents {
		w[k/4] |= uint32(x) << (8 * (k % 4))
	}
	return w, nil
}

// encParams mirrors struct EncParams of splitzip.cuh (104 bytes).
type encParams struct {
	src, ids, dst, frameStride, sizes, ws, strideBytes            uint64
	n, frames, chunks, blockElems, nBlocks, segsPerFrame, hostRaw uint32
	codebook                                                      [4]uint32
}

func (p *encParams) args() *cuda.Args {
	a := cuda.NewArgs()
	a.U64(p.src).U64(p.ids).U64(p.dst).U64(p.frameStride).U64(p.sizes).U64(p.ws).U64(p.strideBytes)
	a.U32(p.n).U32(p.frames).U32(p.chunks).U32(p.blockElems).U32(p.nBlocks).U32(p.segsPerFrame).U32(p.hostRaw).U32(0)
	for _, w := range p.codebook {
		a.U32(w)
	}
	return a
}

// decParams mirrors struct DecParams of splitzip.cuh (88 bytes).
type decParams struct {
	src, frameStride, frameCap, dst, ids, strideBytes, status, outBytes uint64
	frames, chunks, blockElems, nBlocks, segsPerFrame                   uint32
}

func (p *decParams) args() *cuda.Args {
	a := cuda.NewArgs()
	a.U64(p.src).U64(p.frameStride).U64(p.frameCap).U64(p.dst).U64(p.ids).U64(p.strideBytes).U64(p.status).U64(p.outBytes)
	a.U32(p.frames).U32(p.chunks).U32(p.blockElems).U32(p.nBlocks).U32(p.segsPerFrame).U32(0)
	return a
}

// launchEncode enqueues the workspace reset, the encode kernel and the raw fallback kernel for p.
func (c *Codec) launchEncode(s *cuda.Stream, p *encParams, enc, raw *cuda.Function) error {
	total := uint64(p.frames) * uint64(p.chunks)
	block := cuda.Dim3{X: uint32(c.threads)}
	rawGrid := cuda.Dim3{X: uint32(min(total, rawGridLimit))}
	if escapesOffset(uint64(p.n)) > headerSize+2*uint64(p.n) {
		// Too small for a coded frame even without escapes (the CPU encoder decides the same): raw.
		p.hostRaw = 1
		if total == 0 {
			p.chunks, rawGrid.X = 1, 1
		}
		return raw.Launch(s, rawGrid, cuda.Dim3{X: 256}, 0, p.args())
	}
	if err := s.MemsetD32Async(cuda.DevicePtr(p.ws), 0, workspaceSize(uint64(p.frames), uint64(p.chunks))/4); err != nil {
		return err
	}
	if err := enc.Launch(s, cuda.Dim3{X: uint32(total)}, block, 0, p.args()); err != nil {
		return err
	}
	return raw.Launch(s, rawGrid, cuda.Dim3{X: 256}, 0, p.args())
}

// EncodeAsync enqueues on s the encoding of the bf16 tensor at src (srcLen bytes) into one format-v1 frame
// at dst, byte-identical to what codec.Encoder.EncodeWith writes for the same input and codebook.
//
//   - dst must have room for MaxEncodedLen(srcLen) bytes;
//   - the frame's length is written to sizeOut as a little-endian uint64 (device memory, or pinned host memory
//     mapped into the device's address space): copy it to the host with a stream-ordered copy;
//   - ws is EncodeWorkspaceSize(srcLen) bytes of device memory, used by this call until s reaches its end.
//
// src and dst must be 16-byte aligned. Nothing waits for the device.
func (c *Codec) EncodeAsync(s *cuda.Stream, src cuda.DevicePtr, srcLen int, cb *codec.Codebook, dst, sizeOut, ws cuda.DevicePtr) error {
	words, err := codebookWords(cb)
	if err != nil {
		return err
	}
	if srcLen < 0 || srcLen%2 != 0 || srcLen/2 > math.MaxUint32 {
		return fmt.Errorf("%w: %d bytes of bf16", codec.ErrSize, srcLen)
	}
	if !aligned(src) || !aligned(dst) || sizeOut%8 != 0 || ws%8 != 0 {
		return ErrAlignment
	}
	n := uint64(srcLen / 2)
	p := &encParams{
		src: uint64(src), dst: uint64(dst), sizes: uint64(sizeOut), ws: uint64(ws),
		n: uint32(n), frames: 1, chunks: uint32(chunksOf(n)), codebook: words,
	}
	return c.launchEncode(s, p, c.encDense, c.rawDense)
}

// DecodeAsync enqueues on s the decoding of the frame at src (frameLen bytes readable there; the frame may
// be shorter) into dst, which receives exactly dstLen bytes: the frame's decoded size. It decodes frames of
// bf16 with 4-bit codes and 4,096-element chunks (what v1 encoders write for bf16) and raw frames of any
// dtype. A status word (StatusOK or an error, see StatusError) is written to status as a little-endian
// uint32. src and dst must be 16-byte aligned.
func (c *Codec) DecodeAsync(s *cuda.Stream, src cuda.DevicePtr, frameLen int, dst cuda.DevicePtr, dstLen int, status cuda.DevicePtr) error {
	if dstLen < 0 || frameLen < 0 {
		return fmt.Errorf("%w: frame %d bytes, destination %d bytes", codec.ErrSize, frameLen, dstLen)
	}
	if !aligned(src) || !aligned(dst) || status%4 != 0 {
		return ErrAlignment
	}
	chunks := max(1, (uint64(dstLen)+2*chunkElems-1)/(2*chunkElems))
	p := &decParams{
		src: uint64(src), frameCap: uint64(frameLen), dst: uint64(dst), status: uint64(status),
		outBytes: uint64(dstLen), frames: 1, chunks: uint32(chunks),
	}
	if err := s.MemsetD32Async(status, 0, 1); err != nil {
		return err
	}
	return c.decDense.Launch(s, cuda.Dim3{X: uint32(chunks)}, cuda.Dim3{X: uint32(c.threads)}, 0, p.args())
}

// LaunchNoop enqueues an empty kernel: the launch-latency baseline of the benchmarks.
func (c *Codec) LaunchNoop(s *cuda.Stream) error {
	return c.noop.Launch(s, cuda.Dim3{X: 1}, cuda.Dim3{X: 32}, 0, nil)
}
