package kernels

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/kernels/cuda"
)

// Format-v1 constants the kernels are built for (splitzip.cuh).
const (
	headerSize  = codec.HeaderSize
	chunkElems  = 1 << codec.DefaultChunk // 4,096
	codebookLen = 16
	escapeSize  = 3
	// Blocks of the raw fallback kernel, which strides over the chunks (kRawBlocks in splitzip.cuh; after the
	// streaming encoder exactly as many). One per H100 SM: 132 blocks measured +0.2 % on the 256 MiB encode
	// against 528 (1,056: -0.4 %; BENCH.md), and 16, 33 or 66 the same as 132.
	rawGridLimit = 132
	// The workspace's leading words that persist from call to call (kCounterWords in splitzip.cuh): the
	// streaming encoder's decision count, then from word seenWord (kSeenWord) the raw fallback kernel's blocks'
	// copies of it.
	seenWord     = 16
	counterBytes = 8 * (seenWord + rawGridLimit)
	// What the raw fallback kernel does (RawMode in splitzip.cuh).
	rawAfterTile   = 0
	rawHost        = 1
	rawAfterStream = 2
)

// ErrAlignment is returned when a device pointer or stride the kernels access with 16-byte vectors is not
// 16-byte aligned.
var ErrAlignment = errors.New("splitzip: GPU buffers must be 16-byte aligned")

// Option configures a Codec.
type Option func(*options) error

type options struct {
	enc, dec string
	picked   bool   // WithKernels was given: no size-based choice of encoder
	tune     uint32 // kTune* bits of splitzip.cuh: bench experiments only
	gridMul  int    // pipelined kernels: grid = gridMul × resident blocks (bench experiments only; 0: 1)
	noPDL    bool   // load the sm_80 PTX and launch plainly even on Hopper (bench and test comparisons)
}

// withoutDependentLaunch makes a Codec use the sm_80 kernels and plain launches on any GPU.
func withoutDependentLaunch() Option { return func(o *options) error { o.noPDL = true; return nil } }

// Tuning experiments (splitzip.cuh kTune*): the bench's "+n", "+d", "+s" variant suffixes.
const (
	tuneNoLookback   = 1 // skip the look-back (wrong frames: timing only)
	tunePlainLoads   = 2
	tuneStreamStores = 4
	// Launch experiments, read by launchEncode only ("+r", "+f"): leave out the raw-fallback kernel, or the
	// streaming encoder's finishing blocks, to time the rest. Timing only: the frame is right only where dst
	// already holds this input's frame, as in the bench, which times every codec after the default one on the
	// same buffers, and the workspace is left dirty (the bench zeroes it again).
	tuneNoRawLaunch    = 8
	tuneNoFinishLaunch = 16
	tuneNoPlace        = 64  // the finishing blocks read the parked escapes but store none (timing only)
	tuneNoHeader       = 128 // the header warps write nothing (timing only)
)

func withTune(bits uint32) Option { return func(o *options) error { o.tune = bits; return nil } }

// The kernel variants a Codec uses unless WithKernels picks others, the fastest in the bench on an H100
// (BENCH.md): the streaming encoder and the one-chunk tile decoder. Below SmallEncodeBytes of input the encoder
// is SmallEncodeKernels instead: the streaming encoder's finishing tail (the last groups' gather, look-back and
// placement after its last chunk, ~3 µs on an H100) costs more there than it saves. Measured on the H100 with
// groups of 32 chunks (BENCH.md, seventh session): 16 MiB tile 758 GB/s, streaming 751; 32 MiB 892 and 979;
// 64 MiB 1,018 and 1,255.
const (
	DefaultEncodeKernels = "s256u8"
	DefaultDecodeKernels = "t256c1"
	SmallEncodeKernels   = "t256c4"
	SmallEncodeBytes     = 32 << 20
)

// Variants lists the kernel variants in the PTX: "t<threads per block>c<4,096-element chunks per block>",
// and the pipelined persistent ones "t<threads>c<chunks per tile>s<shared-memory stages>", whose blocks loop
// over tiles with the copies of the next stages in flight.
// The streaming variants "s<threads>u<units>" code a chunk per warp (u 16-byte units per lane in flight) and
// place the escapes with blocks appended to the grid; they decode a chunk per block.
var Variants = []string{"t256c1", "t256c2", "t256c4", "t256c1s4", "s256u4", "s256u8", "s128u8"}

// WithKernels picks the encode and decode kernel variants (see Variants; the bench times them).
func WithKernels(encode, decode string) Option {
	return func(o *options) error {
		for _, v := range []string{encode, decode} {
			if _, _, _, err := parseVariant(v); err != nil {
				return err
			}
		}
		o.enc, o.dec, o.picked = encode, decode, true
		return nil
	}
}

// parseVariant returns a variant's threads per block, chunks per block (tile) and stages (0: one tile per
// block); for a streaming variant (isStreaming), cpt is its units per lane.
func parseVariant(v string) (threads, cpt, stages int, err error) {
	if !slices.Contains(Variants, v) {
		return 0, 0, 0, fmt.Errorf("%w: kernel variant %q (have %v)", codec.ErrOption, v, Variants)
	}
	if isStreaming(v) {
		_, err = fmt.Sscanf(v, "s%du%d", &threads, &cpt)
	} else if strings.Contains(v, "s") {
		_, err = fmt.Sscanf(v, "t%dc%ds%d", &threads, &cpt, &stages)
	} else {
		_, err = fmt.Sscanf(v, "t%dc%d", &threads, &cpt)
	}
	if err != nil {
		return 0, 0, 0, fmt.Errorf("%w: kernel variant %q: %v", codec.ErrOption, v, err)
	}
	return threads, cpt, stages, nil
}

// isStreaming tells the streaming variants ("s<threads>u<units>") from the tile ones ("t…").
func isStreaming(v string) bool { return strings.HasPrefix(v, "s") }

// kernel is one loaded variant: its dense and paged entry points and its shape.
type kernel struct {
	dense, paged *cuda.Function
	threads, cpt int
	stages       int    // pipelined persistent kernel: shared-memory stages; 0: one tile per block
	stream       bool   // streaming kernel: cpt is the chunks of a block (encode: a warp each; decode: 1)
	resident     uint64 // pipelined: blocks the device holds at once (the grid's upper bound)
	perSM        int
	name         string
}

// grid is the number of blocks for frames of chunks chunks each.
func (k *kernel) grid(frames, chunks uint64) uint32 {
	tiles := frames * ((chunks + uint64(k.cpt) - 1) / uint64(k.cpt))
	if k.stages > 0 {
		tiles = max(1, min(tiles, k.resident))
	}
	return uint32(tiles)
}

// funcPreferredSharedCarveout is CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT (percent of the unified
// L1/shared memory given to shared memory).
const funcPreferredSharedCarveout cuda.FuncAttribute = 9

// Codec holds the loaded kernels of one context. Its methods only enqueue work, and may be called from any
// goroutine and on several streams at once: all per-call state lives in the caller's buffers.
type Codec struct {
	ctx      *cuda.Context
	mod      *cuda.Module
	enc, dec kernel
	encSmall *kernel // the encoder below SmallEncodeBytes; nil: enc for every size
	raw      kernel
	noop     *cuda.Function
	copy16   *cuda.Function
	spin     *cuda.Function
	tune     uint32
	pdl      bool // the sm_90 kernels are loaded: launchAfter lets a kernel launch during its predecessor's tail
}

// NewCodec loads the kernels into ctx (the driver JIT-compiles the embedded PTX on first load and caches
// the result): on compute capability 9.0 and newer the build with programmatic dependent launch.
func NewCodec(ctx *cuda.Context, opts ...Option) (*Codec, error) {
	o := options{enc: DefaultEncodeKernels, dec: DefaultDecodeKernels}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	image, pdl := ptx, false
	if major, _, err := ctx.Device().ComputeCapability(); err == nil && major >= 9 && !o.noPDL && cuda.CanLaunchWith() {
		image, pdl = ptxSM90, true
	}
	mod, err := ctx.LoadModule(image)
	if err != nil {
		return nil, fmt.Errorf("splitzip: load GPU kernels: %w", err)
	}
	c := &Codec{ctx: ctx, mod: mod, tune: o.tune, pdl: pdl}
	load := func(k *kernel, prefix, variant string) error {
		var err error
		if k.threads, k.cpt, k.stages, err = parseVariant(variant); err != nil {
			return err
		}
		k.name = variant
		if k.stream = isStreaming(variant); k.stream {
			// Chunks per block: the encoder codes one per warp, the decoder one per block.
			k.cpt = 1
			if prefix == "sz_encode_" {
				k.cpt = k.threads / 32
			}
		}
		if k.dense, err = mod.Function(prefix + variant + "_dense"); err != nil {
			return err
		}
		if k.paged, err = mod.Function(prefix + variant + "_paged"); err != nil {
			return err
		}
		if k.stages > 0 {
			k.resident = 0
			// As much shared memory as the SM has (the stages limit the blocks per SM), and a grid of the
			// blocks that fit at once.
			sms, err := ctx.Device().Attribute(cuda.AttrMultiprocessorCount)
			if err != nil {
				return err
			}
			perSM := 1 << 30
			for _, f := range []*cuda.Function{k.dense, k.paged} {
				if err := f.SetAttribute(funcPreferredSharedCarveout, 100); err != nil {
					return err
				}
				n, err := f.MaxActiveBlocksPerSM(k.threads, 0)
				if err != nil {
					return err
				}
				perSM = min(perSM, max(n, 1))
			}
			k.resident = uint64(sms*perSM) * uint64(max(1, o.gridMul))
			k.perSM = perSM
		}
		return nil
	}
	if err = load(&c.enc, "sz_encode_", o.enc); err == nil {
		err = load(&c.dec, "sz_decode_", o.dec)
	}
	if err == nil && !o.picked && o.enc != SmallEncodeKernels {
		c.encSmall = new(kernel)
		err = load(c.encSmall, "sz_encode_", SmallEncodeKernels)
	}
	if err == nil {
		c.raw = kernel{threads: 256, cpt: 1, name: "raw"}
		if c.raw.dense, err = mod.Function("sz_raw_t256_dense"); err == nil {
			c.raw.paged, err = mod.Function("sz_raw_t256_paged")
		}
	}
	if err == nil {
		c.noop, err = mod.Function("sz_noop")
	}
	if err == nil {
		c.copy16, err = mod.Function("sz_copy16")
	}
	if err == nil {
		c.spin, err = mod.Function("sz_spin")
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

// Kernels returns the encode and decode kernel variants in use.
func (c *Codec) Kernels() (encode, decode string) { return c.enc.name, c.dec.name }

// DependentLaunch reports whether the codec runs the sm_90 kernels, whose encoder lets its raw-fallback kernel
// launch during its tail (programmatic dependent launch).
func (c *Codec) DependentLaunch() bool { return c.pdl }

var dependentLaunch = map[cuda.LaunchAttribute]int32{cuda.LaunchProgrammaticStreamSerialization: 1}

// launchAfter enqueues f, which waits at griddepcontrol.wait for the previous kernel's writes (see
// splitzip.cuh), to launch while that kernel still runs where the codec has the sm_90 kernels.
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

// workspaceSize is counterBytes, then the larger of the two encoders' bodies. The tile encoders': a counter
// word and a look-back word per tile (at most one per chunk), which the raw fallback kernel zeroes after them.
// The streaming encoder's (StreamWS in splitzip.cuh): a look-back word and a total per group of chunks, a total
// per frame, and per chunk an escape count and streamSlots parked escapes of 4 bytes, position and exponent
// (3.2 % of the input in all), which its finishing and header blocks zero once read. The encoders are fast
// because nothing resets the workspace before a launch: the streaming encoder tells a word written in this
// call from an unwritten one by its being nonzero.
func workspaceSize(frames, chunks uint64) int {
	stream := 2*8*frames*streamGroups(chunks) + 8*frames + 4*frames*chunks + 4*frames*chunks*streamSlots
	return counterBytes + max(tileControlBytes(frames, chunks), int(stream))
}

// controlBytes is the workspace's leading part that holds every word an encode may leave nonzero: the counters,
// then the tile encoders' counter and look-back words, within which lie the streaming encoder's look-back
// words, group and frame totals and counts.
func controlBytes(frames, chunks uint64) int { return counterBytes + tileControlBytes(frames, chunks) }

// tileControlBytes is the tile encoders' counter and look-back words (ws_control_words in splitzip.cuh), which
// the raw fallback kernel zeroes after them.
func tileControlBytes(frames, chunks uint64) int { return int(8 * (1 + frames*(chunks+4))) }

// Shapes of the streaming encoder (kSlots and kGroup of splitzip.cuh).
const (
	streamSlots = 64
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

// encParams mirrors struct EncParams of splitzip.cuh (104 bytes).
type encParams struct {
	src, ids, dst, frameStride, sizes, ws, strideBytes                  uint64
	n, frames, chunks, blockElems, nBlocks, segsPerFrame, rawMode, tune uint32
	codebook                                                            [4]uint32
}

func (p *encParams) args() *cuda.Args {
	a := cuda.NewArgs()
	a.U64(p.src).U64(p.ids).U64(p.dst).U64(p.frameStride).U64(p.sizes).U64(p.ws).U64(p.strideBytes)
	a.U32(p.n).U32(p.frames).U32(p.chunks).U32(p.blockElems).U32(p.nBlocks).U32(p.segsPerFrame).U32(p.rawMode).U32(p.tune)
	for _, w := range p.codebook {
		a.U32(w)
	}
	return a
}

// decParams mirrors struct DecParams of splitzip.cuh (88 bytes).
type decParams struct {
	src, frameStride, frameCap, dst, ids, strideBytes, status, outBytes uint64
	frames, chunks, blockElems, nBlocks, segsPerFrame, tune             uint32
}

func (p *decParams) args() *cuda.Args {
	a := cuda.NewArgs()
	a.U64(p.src).U64(p.frameStride).U64(p.frameCap).U64(p.dst).U64(p.ids).U64(p.strideBytes).U64(p.status).U64(p.outBytes)
	a.U32(p.frames).U32(p.chunks).U32(p.blockElems).U32(p.nBlocks).U32(p.segsPerFrame).U32(p.tune)
	return a
}

// launchEncode enqueues the encoding of p: the encode kernel (a streaming one with its finishing and header
// blocks), then the raw fallback kernel, which launches during the encoder's tail where the GPU allows
// (launchAfter) and, after a tile encoder, zeroes the workspace's control words again.
func (c *Codec) launchEncode(s *cuda.Stream, p *encParams, paged bool) error {
	p.tune = c.tune
	total := uint64(p.frames) * uint64(p.chunks)
	k := &c.enc
	if c.encSmall != nil && 2*uint64(p.frames)*uint64(p.n) < SmallEncodeBytes {
		k = c.encSmall
	}
	enc, raw := k.dense, c.raw.dense
	if paged {
		enc, raw = k.paged, c.raw.paged
	}
	rawGrid := cuda.Dim3{X: uint32(min(total, rawGridLimit))}
	if escapesOffset(uint64(p.n)) > headerSize+2*uint64(p.n) {
		// Too small for a coded frame even without escapes (the CPU encoder decides the same): raw.
		p.rawMode = rawHost
		if total == 0 {
			p.chunks, rawGrid.X = 1, 1
		}
		return raw.Launch(s, rawGrid, cuda.Dim3{X: 256}, 0, p.args())
	}
	grid := cuda.Dim3{X: k.grid(uint64(p.frames), uint64(p.chunks))}
	if k.stream && p.tune&tuneNoFinishLaunch == 0 {
		// The finishing blocks (stream_role in splitzip.cuh): a warp per group of chunks, then a warp per frame
		// for its header.
		warps := uint64(k.threads / 32)
		grid.X += uint32((uint64(p.frames)*streamGroups(uint64(p.chunks))+warps-1)/warps + (uint64(p.frames)+warps-1)/warps)
		// Its header blocks tell the raw fallback kernel which frames are raw, one count per frame that each of
		// its blocks follows (raw_chunks): all of them run.
		p.rawMode, rawGrid.X = rawAfterStream, rawGridLimit
	}
	if err := enc.Launch(s, grid, cuda.Dim3{X: uint32(k.threads)}, 0, p.args()); err != nil {
		return err
	}
	if p.tune&tuneNoRawLaunch != 0 {
		return nil
	}
	if err := c.launchAfter(raw, s, rawGrid, cuda.Dim3{X: 256}, p.args()); err != nil {
		// The encoder runs without the kernel that reads its decisions and, after a tile encoder, zeroes its
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
	p.tune = c.tune
	if err := s.MemsetD32Async(cuda.DevicePtr(p.status), 0, 1); err != nil {
		return err
	}
	dec := c.dec.dense
	if paged {
		dec = c.dec.paged
	}
	return dec.Launch(s, cuda.Dim3{X: c.dec.grid(uint64(p.frames), uint64(p.chunks))}, cuda.Dim3{X: uint32(c.dec.threads)}, 0, p.args())
}

// launchCopy16 enqueues a plain 16-byte vectorized copy of n bytes (n a multiple of 16): the bench's SM
// copy ceiling.
func (c *Codec) launchCopy16(s *cuda.Stream, dst, src cuda.DevicePtr, n int) error {
	return c.copy16.Launch(s, cuda.Dim3{X: 132 * 8}, cuda.Dim3{X: 256}, 0, cuda.NewArgs().Ptr(src).Ptr(dst).U64(uint64(n/16)))
}

// LaunchNoop enqueues an empty kernel: the launch-latency baseline of the benchmarks.
func (c *Codec) LaunchNoop(s *cuda.Stream) error {
	return c.noop.Launch(s, cuda.Dim3{X: 1}, cuda.Dim3{X: 32}, 0, nil)
}
