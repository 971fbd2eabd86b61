package kernels

import (
	"bytes"
	"errors"
	"fmt"
	"math"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/kernels/cuda"
)

// Format-v1 constants the kernels are built for (format.cuh).
const (
	headerSize  = codec.HeaderSize
	chunkElems  = 1 << codec.DefaultChunk // 4,096
	codebookLen = 16
	escapeSize  = 3
	// The most blocks of the raw fallback kernel after the streaming encoder (kRawBlocksMax in format.cuh): the
	// workspace holds a copy of the decision count for each (card.rawBlocks).
	rawBlocksMax = 1024
	// The workspace's leading words that persist from call to call (kCounterWords in format.cuh): the
	// streaming encoder's decision count, then from word seenWord (kSeenWord) the raw fallback kernel's blocks'
	// copies of it.
	seenWord     = 16
	counterBytes = 8 * (seenWord + rawBlocksMax)
	// What the raw fallback kernel does (RawMode in format.cuh).
	rawAfterTile   = 0
	rawHost        = 1
	rawAfterStream = 2
)

// SmallEncodeBytes is the input size (all frames of a call together) from which a Codec encodes with the
// streaming encoder; smaller inputs take the tile encoder. Below it the streaming encoder's finishing tail (the
// last groups' gather, look-back and placement after its last chunk, ~3 µs on an H100) costs more than its
// faster data path saves: the two encoders cross between 16 and 32 MiB (docs/gpu-kernels.md).
const SmallEncodeBytes = 32 << 20

// ErrAlignment is returned when a device pointer or stride the kernels access with 16-byte vectors is not
// 16-byte aligned.
var ErrAlignment = errors.New("splitzip: GPU buffers must be 16-byte aligned")

// Option configures a Codec.
type Option func(*options) error

type options struct {
	ptx        []byte // WithPTX's image; nil: the embedded PTX
	smallBytes uint64 // inputs below it take the tile encoder (SmallEncodeBytes; tests force either encoder)
	noPDL      bool   // load the sm_80 PTX and launch plainly even on Hopper (tests compare both)
	cubin      []byte // the sm_90 machine code tried first on compute capability 9.0 (tests replace it)
}

// WithPTX makes NewCodec load image instead of the embedded PTX: PTX built elsewhere from the kernels' sources
// (another revision's `make -C kernels ptx`, say), with the same entry points and parameters. It is how kernel
// changes are compared on a GPU (splitzip bench -gpu -ptx FILE). The codec uses programmatic dependent launch
// where the image does (griddepcontrol, the sm_90 build) and the GPU and driver support it. NewCodec reads
// image only while it runs.
func WithPTX(image []byte) Option {
	return func(o *options) error {
		for _, name := range entryPoints {
			if !bytes.Contains(image, []byte(".entry "+name+"(")) {
				return fmt.Errorf("%w: the PTX has no entry point %s", codec.ErrOption, name)
			}
		}
		o.ptx = image
		return nil
	}
}

// The kernels' entry points (splitzip.cu): each kernel for a dense tensor (_dense) and for a paged KV cache
// (_paged). Their names keep their shapes: t<threads>c<chunks per block>, s<threads>u<units per lane>.
const (
	tileEncoderName   = "sz_encode_t256c4"
	streamEncoderName = "sz_encode_s256u8"
	decoderName       = "sz_decode_t256c1"
	rawName           = "sz_raw_t256"
)

var entryPoints = append([]string{
	tileEncoderName + "_dense", tileEncoderName + "_paged", streamEncoderName + "_dense", streamEncoderName + "_paged",
	rawName + "_dense", rawName + "_paged", decoderName + "_dense", decoderName + "_paged",
	hrPrepareName, hrEncoderName + "_dense", hrEncoderName + "_paged", hrRawName + "_dense", hrRawName + "_paged",
	hrDecoderName + "_dense", hrDecoderName + "_paged", crcName, blockCopyName,
}, hrFP8EntryPoints()...)

// The encoders' shapes (splitzip.cu): the tile encoder codes 4 chunks a block, the streaming one a chunk a warp.
var (
	tileShape   = kernel{threads: 256, cpb: 4}
	streamShape = kernel{threads: 256, cpb: 256 / 32, stream: true}
)

// kernel is one loaded kernel: its dense and paged entry points and its shape.
type kernel struct {
	dense, paged *cuda.Function
	threads      int
	cpb          int  // chunks per block (the streaming encoder: a warp each)
	stream       bool // the streaming encoder, whose grid has finishing and header blocks after its coding ones
}

// grid is the number of blocks for frames of chunks chunks each.
func (k *kernel) grid(frames, chunks uint64) uint32 {
	return uint32(frames * ((chunks + uint64(k.cpb) - 1) / uint64(k.cpb)))
}

// Codec holds the loaded kernels of one context. Its methods only enqueue work, and may be called from any
// goroutine and on several streams at once: all per-call state lives in the caller's buffers.
type Codec struct {
	ctx         *cuda.Context
	mod         *cuda.Module
	tile        kernel // the encoder below smallBytes of input
	stream      kernel // the encoder from smallBytes on
	dec         kernel
	raw         kernel
	hr          *hrKernels // the high-ratio mode's (entropy.go)
	crc         *cuda.Function
	blockCopy   *cuda.Function
	smallBytes  uint64
	pdl         bool // the kernels use griddepcontrol: launchAfter lets a kernel launch during its predecessor's tail
	precompiled bool // mod is the sm_90 cubin, not JIT-compiled PTX
	card        card
}

// card is what the launches take from the GPU at hand: its SM count.
type card struct{ sms uint32 }

// rawGrid is the raw fallback kernel's blocks where it strides over units of work without following the
// streaming encoder's decisions (after the tile encoder, for the host's raw frames, in the high-ratio mode): one
// an SM at most (more measured no faster on raw copies, docs/gpu-kernels.md).
func (c card) rawGrid(units uint64) uint32 { return uint32(max(1, min(uint64(c.sms), units))) }

// rawBlocks is the raw fallback kernel's blocks after the streaming encoder: four an SM, for the escapes that
// the encoder's finishing warps defer to it (place_deferred in encode_stream.cuh); at most rawBlocksMax.
func (c card) rawBlocks() uint32 { return min(4*c.sms, rawBlocksMax) }

// NewCodec loads the kernels into ctx: on compute capability 9.0 and newer, with a driver that has
// cuLaunchKernelEx, the build with programmatic dependent launch; with WithPTX, the given image. On compute
// capability 9.0 it loads that build's sm_90 machine code; elsewhere, or where the driver refuses that code (a
// driver older than the CUDA 13 whose ptxas wrote it may), the driver JIT-compiles the PTX on first load and
// caches the result.
func NewCodec(ctx *cuda.Context, opts ...Option) (*Codec, error) {
	o := options{smallBytes: SmallEncodeBytes, cubin: cubinSM90}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	major, minor, err := ctx.Device().ComputeCapability()
	if err != nil {
		return nil, fmt.Errorf("splitzip: read the GPU's compute capability: %w", err)
	}
	canPDL := major >= 9 && !o.noPDL && cuda.CanLaunchWith()
	image, cubin := ptx, []byte(nil)
	switch {
	case o.ptx != nil:
		image = o.ptx
	case canPDL:
		image = ptxSM90
		if major == 9 && minor == 0 {
			cubin = o.cubin
		}
	}
	sms, err := ctx.Device().Attribute(cuda.AttrMultiprocessorCount)
	if err != nil {
		return nil, fmt.Errorf("splitzip: read the GPU's SM count: %w", err)
	}
	var mod *cuda.Module
	if cubin != nil {
		if mod, err = ctx.LoadModule(cubin); err != nil {
			mod, cubin = nil, nil
		}
	}
	if mod == nil {
		if mod, err = ctx.LoadModule(image); err != nil {
			return nil, fmt.Errorf("splitzip: load GPU kernels: %w", err)
		}
	}
	c := &Codec{
		ctx: ctx, mod: mod, smallBytes: o.smallBytes, card: card{sms: uint32(max(sms, 1))},
		precompiled: cubin != nil,
		pdl:         canPDL && bytes.Contains(image, []byte("griddepcontrol.wait")),
		tile:        tileShape,
		stream:      streamShape,
		dec:         kernel{threads: 256, cpb: 1},
		raw:         kernel{threads: 256, cpb: 1},
	}
	for _, e := range []struct {
		k    *kernel
		name string
	}{{&c.tile, tileEncoderName}, {&c.stream, streamEncoderName}, {&c.dec, decoderName}, {&c.raw, rawName}} {
		if e.k.dense, err = mod.Function(e.name + "_dense"); err == nil {
			e.k.paged, err = mod.Function(e.name + "_paged")
		}
		if err != nil {
			mod.Close()
			return nil, err
		}
	}
	if c.hr, err = loadHighRatio(mod); err == nil {
		if c.crc, err = mod.Function(crcName); err == nil {
			c.blockCopy, err = mod.Function(blockCopyName)
		}
	}
	if err != nil {
		mod.Close()
		return nil, err
	}
	return c, nil
}

// Close unloads the kernels.
func (c *Codec) Close() error { return c.mod.Close() }

// Context returns the codec's context.
func (c *Codec) Context() *cuda.Context { return c.ctx }

// Precompiled reports whether the codec loaded machine code built for the GPU at hand (sm_90) rather than
// PTX that the driver JIT-compiled.
func (c *Codec) Precompiled() bool { return c.precompiled }

// DependentLaunch reports whether the codec runs kernels built for sm_90, whose encoder lets its raw-fallback
// kernel launch during its tail (programmatic dependent launch).
func (c *Codec) DependentLaunch() bool { return c.pdl }

var dependentLaunch = map[cuda.LaunchAttribute]int32{cuda.LaunchProgrammaticStreamSerialization: 1}

// launchAfter enqueues f, which waits at griddepcontrol.wait for the previous kernel's writes (see device.cuh),
// to launch while that kernel still runs where the codec has the sm_90 kernels.
func (c *Codec) launchAfter(f *cuda.Function, s *cuda.Stream, grid, block cuda.Dim3, args *cuda.Args) error {
	if c.pdl {
		return f.LaunchWith(s, grid, block, 0, args, dependentLaunch)
	}
	return f.Launch(s, grid, block, 0, args)
}

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

// EncodeWorkspaceSize is the workspace EncodeAsync needs for srcLen bytes of input. A workspace must be zero
// before its first use (cuMemsetD8, torch.zeros); every encode leaves it ready for the next (zero but for a
// few counters at its start), so it serves call after call, of any size up to the one it was made for, in one
// stream's order. An encode that returned an error may leave it in any state: zero it again.
func EncodeWorkspaceSize(srcLen int) int { return workspaceSize(1, chunksOf(uint64(srcLen/2))) }

// workspaceSize is counterBytes, then the larger of the two encoders' bodies. The tile encoder's: a counter
// word and a look-back word per tile (at most one per chunk), which the raw fallback kernel zeroes after them.
// The streaming encoder's (StreamWS in encode_stream.cuh): a look-back word and a total per group of chunks, a total
// per frame, and per chunk an escape count and streamSlots parked escapes of 4 bytes, position and exponent
// (25 % of the input in all), which its finishing and header blocks and the raw fallback kernel zero once
// read. The encoders are fast because nothing resets the workspace before a launch: the streaming encoder tells
// a word written in this call from an unwritten one by its being nonzero.
func workspaceSize(frames, chunks uint64) int {
	stream := 2*8*frames*streamGroups(chunks) + 8*frames + 4*frames*chunks + 4*frames*chunks*streamSlots
	return counterBytes + max(tileControlBytes(frames, chunks), int(stream))
}

// controlBytes is the workspace's leading part that holds every word an encode may leave nonzero: the counters,
// then the tile encoder's counter and look-back words, within which lie the streaming encoder's look-back
// words, group and frame totals and counts.
func controlBytes(frames, chunks uint64) int { return counterBytes + tileControlBytes(frames, chunks) }

// tileControlBytes is the tile encoder's counter and look-back words (ws_control_words in raw.cuh), which
// the raw fallback kernel zeroes after them.
func tileControlBytes(frames, chunks uint64) int { return int(8 * (1 + frames*(chunks+4))) }

// Shapes of the streaming encoder (kSlots and kGroup of encode_stream.cuh).
const (
	streamSlots = 512
	streamGroup = 32
)

func streamGroups(chunks uint64) uint64 { return (chunks + streamGroup - 1) / streamGroup }

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

// encParams mirrors struct EncParams of format.cuh (104 bytes; reserved is zero).
type encParams struct {
	src, ids, dst, frameStride, sizes, ws, strideBytes                      uint64
	n, frames, chunks, blockElems, nBlocks, segsPerFrame, rawMode, reserved uint32
	codebook                                                                [4]uint32
}

func (p *encParams) args() *cuda.Args {
	a := cuda.NewArgs()
	a.U64(p.src).U64(p.ids).U64(p.dst).U64(p.frameStride).U64(p.sizes).U64(p.ws).U64(p.strideBytes)
	a.U32(p.n).U32(p.frames).U32(p.chunks).U32(p.blockElems).U32(p.nBlocks).U32(p.segsPerFrame).U32(p.rawMode).U32(p.reserved)
	for _, w := range p.codebook {
		a.U32(w)
	}
	return a
}

// decParams mirrors struct DecParams of format.cuh (88 bytes; reserved is zero).
type decParams struct {
	src, frameStride, frameCap, dst, ids, strideBytes, status, outBytes uint64
	frames, chunks, blockElems, nBlocks, segsPerFrame, reserved         uint32
}

func (p *decParams) args() *cuda.Args {
	a := cuda.NewArgs()
	a.U64(p.src).U64(p.frameStride).U64(p.frameCap).U64(p.dst).U64(p.ids).U64(p.strideBytes).U64(p.status).U64(p.outBytes)
	a.U32(p.frames).U32(p.chunks).U32(p.blockElems).U32(p.nBlocks).U32(p.segsPerFrame).U32(p.reserved)
	return a
}

// encodeLaunch is how an encode runs: the encoder's grid (none when the host decided the frames go raw) and
// which encoder, then the raw fallback kernel's grid.
type encodeLaunch struct {
	stream  bool   // the streaming encoder, else the tile encoder
	grid    uint32 // encoder blocks; 0: no encoder (rawHost)
	rawGrid uint32 // raw fallback kernel blocks
}

// planEncode decides the launches of p on card cd (setting p's rawMode, and for an empty input its chunks): the tile
// encoder below smallBytes of input, else the streaming encoder with its finishing and header blocks; then the
// raw fallback kernel. The host emulation (kernels/emu) launches by the same plan.
func planEncode(p *encParams, smallBytes uint64, tile, stream *kernel, cd card) encodeLaunch {
	total := uint64(p.frames) * uint64(p.chunks)
	k := stream
	if 2*uint64(p.frames)*uint64(p.n) < smallBytes {
		k = tile
	}
	pl := encodeLaunch{stream: k.stream, rawGrid: cd.rawGrid(total)}
	if escapesOffset(uint64(p.n)) > headerSize+2*uint64(p.n) {
		// Too small for a coded frame even without escapes (the CPU encoder decides the same): raw.
		p.rawMode = rawHost
		if total == 0 {
			p.chunks = 1 // the raw kernel writes the empty frame's header (rawGrid gives it one block)
		}
		return pl
	}
	pl.grid = k.grid(uint64(p.frames), uint64(p.chunks))
	if k.stream {
		// The finishing blocks (stream_role in encode_stream.cuh): a warp per group of chunks, then a warp per frame
		// for its header.
		warps := uint64(k.threads / 32)
		pl.grid += uint32((uint64(p.frames)*streamGroups(uint64(p.chunks))+warps-1)/warps + (uint64(p.frames)+warps-1)/warps)
		// Its header blocks tell the raw fallback kernel which frames need it (raw ones, and those whose escapes
		// were deferred to it), one count per frame that each of its blocks follows (raw_chunks): all of them run.
		p.rawMode, pl.rawGrid = rawAfterStream, cd.rawBlocks()
	}
	return pl
}

// launchEncode enqueues the encoding of p as planEncode plans it; the raw fallback kernel launches during the
// encoder's tail where the GPU allows (launchAfter) and, after the tile encoder, zeroes the workspace's control
// words again.
func (c *Codec) launchEncode(s *cuda.Stream, p *encParams, paged bool) error {
	pl := planEncode(p, c.smallBytes, &c.tile, &c.stream, c.card)
	k := &c.tile
	if pl.stream {
		k = &c.stream
	}
	enc, raw := k.dense, c.raw.dense
	if paged {
		enc, raw = k.paged, c.raw.paged
	}
	rawGrid := cuda.Dim3{X: pl.rawGrid}
	if pl.grid == 0 {
		return raw.Launch(s, rawGrid, cuda.Dim3{X: 256}, 0, p.args())
	}
	if err := enc.Launch(s, cuda.Dim3{X: pl.grid}, cuda.Dim3{X: uint32(k.threads)}, 0, p.args()); err != nil {
		return err
	}
	if err := c.launchAfter(raw, s, rawGrid, cuda.Dim3{X: 256}, p.args()); err != nil {
		// The encoder runs without the kernel that reads its decisions and, after the tile encoder, zeroes its
		// control words: reset them behind it (best effort), or the next call would misread them.
		_ = s.MemsetD8Async(cuda.DevicePtr(p.ws), 0, controlBytes(uint64(p.frames), uint64(p.chunks)))
		return err
	}
	return nil
}

// EncodeAsync enqueues on s the encoding of the bf16 tensor at src (srcLen bytes) into one format-v1 frame
// at dst, byte-identical to what codec.Encoder.EncodeWith writes for the same input and codebook.
//
//   - dst must have room for MaxEncodedLen(srcLen) bytes;
//   - the frame's length is written to sizeOut as a little-endian uint64 (device memory, or pinned host memory
//     mapped into the device's address space): copy it to the host with a stream-ordered copy;
//   - ws is EncodeWorkspaceSize(srcLen) bytes of device memory, zero before its first use, used by this call
//     until s reaches its end and left ready for the next call (see EncodeWorkspaceSize).
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
	return c.launchEncode(s, p, false)
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
	return c.launchDecode(s, p, false)
}

// launchDecode enqueues the status reset and the decode kernels for p.
func (c *Codec) launchDecode(s *cuda.Stream, p *decParams, paged bool) error {
	if err := s.MemsetD32Async(cuda.DevicePtr(p.status), 0, 1); err != nil {
		return err
	}
	dec := c.dec.dense
	if paged {
		dec = c.dec.paged
	}
	return dec.Launch(s, cuda.Dim3{X: c.dec.grid(uint64(p.frames), uint64(p.chunks))}, cuda.Dim3{X: uint32(c.dec.threads)}, 0, p.args())
}
