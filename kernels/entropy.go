package kernels

import (
	"fmt"
	"math"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/kernels/cuda"
)

// The high-ratio mode's kernels (entropy.cuh): format v2 frames with Huffman-coded exponents, of bf16, fp8_e4m3
// and fp8_e5m2 tensors.
const (
	hrChunkElems    = 1 << codec.EntropyChunk // elements per chunk (kHRChunk)
	hrEncodeThreads = 256                     // an encode block (kHREncWarps warps)
	hrEncodeChunks  = 2                       // chunks per encode block (kHREncChunks)
	hrDecodeWarps   = 8                       // chunks per decode block, a warp each
	hrRawThreads    = 256
)

// The high-ratio kernels' entry points (splitzip.cu): per dtype, each _dense and _paged. bf16's names carry no
// dtype; the others' carry it after the kernel's (sz_hr_encode_e4m3_dense).
const (
	hrPrepareName = "sz_hr_prepare" // one per dtype: no map
	hrEncoderName = "sz_hr_encode"
	hrRawName     = "sz_hr_raw"
	hrDecoderName = "sz_hr_decode"
)

// hrDTypes are the dtypes the high-ratio kernels code, in the order of hrKernels.sets, with their entry points'
// dtype suffix.
var hrDTypes = [...]struct {
	dt     codec.DType
	suffix string
}{{codec.BF16, ""}, {codec.FP8E4M3, "_e4m3"}, {codec.FP8E5M2, "_e5m2"}}

// hrFP8EntryPoints lists the fp8 high-ratio kernels' entry points (bf16's are in entryPoints already).
func hrFP8EntryPoints() []string {
	var names []string
	for _, d := range hrDTypes[1:] {
		names = append(names, hrPrepareName+d.suffix)
		for _, k := range []string{hrEncoderName, hrRawName, hrDecoderName} {
			names = append(names, k+d.suffix+"_dense", k+d.suffix+"_paged")
		}
	}
	return names
}

// hrSet is one dtype's high-ratio kernels.
type hrSet struct {
	prepare       *cuda.Function
	enc, raw, dec [2]*cuda.Function // dense, paged
	dt            codec.DType
}

type hrKernels struct {
	sets [len(hrDTypes)]hrSet
}

func loadHighRatio(mod *cuda.Module) (*hrKernels, error) {
	k := new(hrKernels)
	for d, dt := range hrDTypes {
		set := &k.sets[d]
		set.dt = dt.dt
		var err error
		if set.prepare, err = mod.Function(hrPrepareName + dt.suffix); err != nil {
			return nil, err
		}
		for i, kind := range []string{"_dense", "_paged"} {
			if set.enc[i], err = mod.Function(hrEncoderName + dt.suffix + kind); err != nil {
				return nil, err
			}
			if set.raw[i], err = mod.Function(hrRawName + dt.suffix + kind); err != nil {
				return nil, err
			}
			if set.dec[i], err = mod.Function(hrDecoderName + dt.suffix + kind); err != nil {
				return nil, err
			}
		}
	}
	return k, nil
}

// CheckHighRatioDType reports whether the high-ratio kernels code dt: nil, or an error wrapping
// codec.ErrDType that names the dtypes they code. It needs no GPU, so that callers can refuse a dtype before
// they load the kernels.
func CheckHighRatioDType(dt codec.DType) error {
	_, err := hrIndex(dt)
	return err
}

// hrIndex is dt's index in hrDTypes (and hrKernels.sets).
func hrIndex(dt codec.DType) (int, error) {
	for i, d := range hrDTypes {
		if d.dt == dt {
			return i, nil
		}
	}
	return 0, fmt.Errorf("%w: the GPU high-ratio kernels code bf16, fp8_e4m3 and fp8_e5m2, not %s", codec.ErrDType, dt)
}

// of returns the kernels of dtype dt.
func (k *hrKernels) of(dt codec.DType) (*hrSet, error) {
	i, err := hrIndex(dt)
	if err != nil {
		return nil, err
	}
	return &k.sets[i], nil
}

// hrMaxTableLen is the longest code table a frame of dt carries: lo, hi and 2^eb + 1 four-bit lengths (131
// bytes for bf16, 19 for fp8_e5m2, 11 for fp8_e4m3).
func hrMaxTableLen(dt codec.DType) uint32 { return 2 + (1<<dt.ExponentBits()+2)/2 }

func hrChunks(n uint64) uint64 { return max(1, (n+hrChunkElems-1)/hrChunkElems) }

// hrStreamsOffset is where a high-ratio frame of n elements of dt starts its exponent streams (hr_layout in
// entropy.cuh): after the residual section's ceil(n × residual bits / 8) bytes.
func hrStreamsOffset(dt codec.DType, n, chunks, tableLen uint64) uint64 {
	res := (n*uint64(dt.ResidualBits()) + 7) / 8
	return align16(align16(align16(headerSize+tableLen)+4*chunks) + res)
}

// hrWorkspaceSize is the encode workspace of frames frames of chunks chunks: four words per frame, then a
// look-back state word per chunk, then on 16 bytes the encode table (hr_ws_* in entropy.cuh).
func hrWorkspaceSize(frames, chunks uint64) int {
	return int(align16(hrWorkspaceWords(frames, chunks)*8) + hrEncTableSize)
}

// hrWorkspaceWords is the number of the workspace's 8-byte words that hr_prepare zeroes.
func hrWorkspaceWords(frames, chunks uint64) uint64 { return 2*frames + frames*chunks }

// hrEncTableSize is sizeof(HREncTable): an entry and a length per exponent, the longest code, padding.
const hrEncTableSize = 4*256 + 256 + 16

// HighRatioWorkspaceSize is the device workspace EncodeHighRatioAsync needs for srcLen bytes of bf16.
func HighRatioWorkspaceSize(srcLen int) int { return HighRatioDTypeWorkspaceSize(codec.BF16, srcLen) }

// HighRatioDTypeWorkspaceSize is the device workspace EncodeHighRatioDTypeAsync needs for srcLen bytes of dt
// (for a dtype the kernels do not code, that of srcLen 1-byte elements: the encode refuses such a dtype).
func HighRatioDTypeWorkspaceSize(dt codec.DType, srcLen int) int {
	return hrWorkspaceSize(1, hrChunks(uint64(srcLen/max(dt.Size(), 1))))
}

// hrEncParams mirrors struct HREncParams of entropy.cuh (96 bytes).
type hrEncParams struct {
	src, ids, dst, frameStride, sizes, ws, strideBytes, table uint64
	n, frames, chunks, blockElems, nBlocks, segsPerFrame      uint32
	tableLen, rawOnly                                         uint32
}

func (p *hrEncParams) args() *cuda.Args {
	a := cuda.NewArgs()
	a.U64(p.src).U64(p.ids).U64(p.dst).U64(p.frameStride).U64(p.sizes).U64(p.ws).U64(p.strideBytes).U64(p.table)
	a.U32(p.n).U32(p.frames).U32(p.chunks).U32(p.blockElems).U32(p.nBlocks).U32(p.segsPerFrame).U32(p.tableLen).U32(p.rawOnly)
	return a
}

// hrDecParams mirrors struct HRDecParams of entropy.cuh (88 bytes).
type hrDecParams struct {
	src, frameStride, frameCap, dst, ids, strideBytes, status, outBytes uint64
	frames, chunks, blockElems, nBlocks, segsPerFrame                   uint32
}

func (p *hrDecParams) args() *cuda.Args {
	a := cuda.NewArgs()
	a.U64(p.src).U64(p.frameStride).U64(p.frameCap).U64(p.dst).U64(p.ids).U64(p.strideBytes).U64(p.status).U64(p.outBytes)
	a.U32(p.frames).U32(p.chunks).U32(p.blockElems).U32(p.nBlocks).U32(p.segsPerFrame).U32(0)
	return a
}

func (c *Codec) launchHREncode(s *cuda.Stream, k *hrSet, p *hrEncParams, paged int) error {
	if p.tableLen < 3 || p.tableLen > hrMaxTableLen(k.dt) {
		return fmt.Errorf("%w: code table of %d bytes for %s", codec.ErrCodebook, p.tableLen, k.dt)
	}
	// Too small for a high-ratio frame even with empty streams (the CPU encoder decides the same): raw.
	n := uint64(p.n)
	if hrStreamsOffset(k.dt, n, uint64(p.chunks), uint64(p.tableLen)) >= headerSize+uint64(k.dt.Size())*n {
		p.rawOnly = 1
	}
	// The workspace zeroed and the encode table built, in one launch of blocks shaped as the encoder's (its
	// first block builds the table with 8 warps), a word a thread, at most a block an SM.
	words := hrWorkspaceWords(uint64(p.frames), uint64(p.chunks))
	grid := c.card.rawGrid((words + hrEncodeThreads - 1) / hrEncodeThreads)
	if err := k.prepare.Launch(s, cuda.Dim3{X: grid}, cuda.Dim3{X: hrEncodeThreads}, 0, p.args()); err != nil {
		return err
	}
	total := uint64(p.frames) * ((uint64(p.chunks) + hrEncodeChunks - 1) / hrEncodeChunks)
	// The encoder reads its chunks while hr_prepare builds the table, and waits for it only then.
	if err := c.launchAfter(k.enc[paged], s, cuda.Dim3{X: uint32(total)}, cuda.Dim3{X: hrEncodeThreads}, p.args()); err != nil {
		return err
	}
	return c.launchAfter(k.raw[paged], s, cuda.Dim3{X: c.card.hrRawGrid(n)}, cuda.Dim3{X: hrRawThreads}, p.args())
}

// hrRawGrid is hr_raw's grid for frames of n elements: a thread per unit of 8 elements, at most a block an SM
// (it strides over the rest).
func (cd card) hrRawGrid(n uint64) uint32 {
	units := (n + 7) / 8
	return cd.rawGrid((units + hrRawThreads - 1) / hrRawThreads)
}

// EncodeHighRatioAsync enqueues on s the encoding of the bf16 tensor at src (srcLen bytes) into one format-v2
// high-ratio frame at dst, byte-identical to the CPU encoder's frame for the same input and code table.
//
//   - table holds tableLen bytes of device memory: a code table exactly as frames carry it (see
//     codec.CodeTable), valid for bf16 and able to code every exponent of the input (directly or by its escape
//     symbol); an input it cannot code, or whose coded frame would not be smaller, gets a raw frame;
//   - dst must have room for MaxEncodedLen(srcLen) bytes; the frame's length is written to sizeOut (u64);
//   - ws is HighRatioWorkspaceSize(srcLen) bytes of device memory (the call zeroes it first).
//
// src and dst must be 16-byte aligned. Nothing waits for the device.
func (c *Codec) EncodeHighRatioAsync(s *cuda.Stream, src cuda.DevicePtr, srcLen int, table cuda.DevicePtr, tableLen int, dst, sizeOut, ws cuda.DevicePtr) error {
	return c.EncodeHighRatioDTypeAsync(s, codec.BF16, src, srcLen, table, tableLen, dst, sizeOut, ws)
}

// EncodeHighRatioDTypeAsync is EncodeHighRatioAsync for a tensor of dt: bf16, fp8_e4m3 or fp8_e5m2 (other
// dtypes get codec.ErrDType). The frame is the CPU encoder's for the same input, dtype and code table (a table
// for dt); ws is HighRatioDTypeWorkspaceSize(dt, srcLen) bytes.
func (c *Codec) EncodeHighRatioDTypeAsync(s *cuda.Stream, dt codec.DType, src cuda.DevicePtr, srcLen int, table cuda.DevicePtr, tableLen int, dst, sizeOut, ws cuda.DevicePtr) error {
	k, err := c.hr.of(dt)
	if err != nil {
		return err
	}
	size := dt.Size()
	if srcLen < 0 || srcLen%size != 0 || srcLen/size > math.MaxInt32 {
		return fmt.Errorf("%w: %d bytes of %s", codec.ErrSize, srcLen, dt)
	}
	if !aligned(src) || !aligned(dst) || sizeOut%8 != 0 || ws%8 != 0 {
		return ErrAlignment
	}
	n := uint64(srcLen / size)
	p := &hrEncParams{
		src: uint64(src), dst: uint64(dst), sizes: uint64(sizeOut), ws: uint64(ws), table: uint64(table),
		n: uint32(n), frames: 1, chunks: uint32(hrChunks(n)), tableLen: uint32(tableLen),
	}
	return c.launchHREncode(s, k, p, 0)
}

// DecodeHighRatioAsync enqueues on s the decoding of the frame at src (frameLen bytes readable there) into dst,
// which receives exactly dstLen bytes. It decodes format-v2 high-ratio bf16 frames and raw frames; the status
// word (see StatusError) is written to status.
func (c *Codec) DecodeHighRatioAsync(s *cuda.Stream, src cuda.DevicePtr, frameLen int, dst cuda.DevicePtr, dstLen int, status cuda.DevicePtr) error {
	return c.DecodeHighRatioDTypeAsync(s, codec.BF16, src, frameLen, dst, dstLen, status)
}

// DecodeHighRatioDTypeAsync is DecodeHighRatioAsync into a tensor of dt (bf16, fp8_e4m3 or fp8_e5m2): it
// decodes high-ratio frames of dt and raw frames of dstLen bytes. A high-ratio frame of another dtype ends
// with StatusUnsupported.
func (c *Codec) DecodeHighRatioDTypeAsync(s *cuda.Stream, dt codec.DType, src cuda.DevicePtr, frameLen int, dst cuda.DevicePtr, dstLen int, status cuda.DevicePtr) error {
	k, err := c.hr.of(dt)
	if err != nil {
		return err
	}
	size := dt.Size()
	if dstLen < 0 || frameLen < 0 || dstLen%size != 0 {
		return fmt.Errorf("%w: frame %d bytes, destination %d bytes of %s", codec.ErrSize, frameLen, dstLen, dt)
	}
	if !aligned(src) || !aligned(dst) || status%4 != 0 {
		return ErrAlignment
	}
	p := &hrDecParams{
		src: uint64(src), frameCap: uint64(frameLen), dst: uint64(dst), status: uint64(status),
		outBytes: uint64(dstLen), frames: 1, chunks: uint32(hrChunks(uint64(dstLen / size))),
	}
	return c.launchHRDecode(s, k, p, 0)
}

func (c *Codec) launchHRDecode(s *cuda.Stream, k *hrSet, p *hrDecParams, paged int) error {
	if err := s.MemsetD32Async(cuda.DevicePtr(p.status), 0, 1); err != nil {
		return err
	}
	bpf := (uint64(p.chunks) + hrDecodeWarps - 1) / hrDecodeWarps
	grid := cuda.Dim3{X: uint32(uint64(p.frames) * bpf)}
	return k.dec[paged].Launch(s, grid, cuda.Dim3{X: 32 * hrDecodeWarps}, 0, p.args())
}

// GatherEncodeHighRatioWorkspaceSize is the workspace GatherEncodeHighRatioAsync needs.
func (l PagedLayout) GatherEncodeHighRatioWorkspaceSize(r PagedRequest) int {
	frames, elems := l.Frames(r)
	return hrWorkspaceSize(uint64(frames), hrChunks(uint64(elems)))
}

// GatherEncodeHighRatioAsync is GatherEncodeAsync in the high-ratio mode: a request's blocks straight from the
// paged cache into one frame, or one per layer, FrameStride apart at dst, with the code table of tableLen bytes
// at table (see EncodeHighRatioAsync). ws is GatherEncodeHighRatioWorkspaceSize bytes; the call zeroes it.
func (c *Codec) GatherEncodeHighRatioAsync(s *cuda.Stream, l PagedLayout, r PagedRequest, table cuda.DevicePtr, tableLen int, dst, sizesOut, ws cuda.DevicePtr) error {
	if err := l.check(r); err != nil {
		return err
	}
	if !aligned(dst) || sizesOut%8 != 0 || ws%8 != 0 {
		return ErrAlignment
	}
	frames, elems := l.Frames(r)
	if elems > math.MaxInt32 {
		return fmt.Errorf("%w: %d elements in a frame; use PerLayer", codec.ErrSize, elems)
	}
	p := &hrEncParams{
		src: uint64(l.Bases), ids: uint64(r.BlockIDs), dst: uint64(dst), frameStride: uint64(l.FrameStride(r)),
		sizes: uint64(sizesOut), ws: uint64(ws), strideBytes: 2 * uint64(l.BlockStride), table: uint64(table),
		n: uint32(elems), frames: uint32(frames), chunks: uint32(hrChunks(uint64(elems))),
		blockElems: uint32(l.BlockElems), nBlocks: uint32(r.NumBlocks), segsPerFrame: l.segsPerFrame(r),
		tableLen: uint32(tableLen),
	}
	return c.launchHREncode(s, &c.hr.sets[0], p, 1)
}

// DecodeScatterHighRatioAsync is DecodeScatterAsync for high-ratio (and raw) frames.
func (c *Codec) DecodeScatterHighRatioAsync(s *cuda.Stream, src cuda.DevicePtr, frameStride, frameCap int, l PagedLayout, r PagedRequest, status cuda.DevicePtr) error {
	frames, elems, err := l.checkScatter(r, src, frameStride, frameCap, status)
	if err != nil {
		return err
	}
	p := &hrDecParams{
		src: uint64(src), frameStride: uint64(frameStride), frameCap: uint64(frameCap), dst: uint64(l.Bases),
		ids: uint64(r.BlockIDs), strideBytes: 2 * uint64(l.BlockStride), status: uint64(status), outBytes: 2 * uint64(elems),
		frames: uint32(frames), chunks: uint32(hrChunks(uint64(elems))), blockElems: uint32(l.BlockElems),
		nBlocks: uint32(r.NumBlocks), segsPerFrame: l.segsPerFrame(r),
	}
	return c.launchHRDecode(s, &c.hr.sets[0], p, 1)
}

// kvHalf returns the parameters of a one-frame transfer of layer's K (kv 0) or V (kv 1) blocks alone: the
// paged kernels read frame 0's segments from the first entry of the base array they are given, so pointing
// them at entry 2·layer + kv makes that cache the whole frame.
func (l PagedLayout) kvHalf(r PagedRequest, layer, kv int) (bases cuda.DevicePtr, elems int, err error) {
	if err := l.check(PagedRequest{BlockIDs: r.BlockIDs, NumBlocks: r.NumBlocks, PerLayer: true}); err != nil {
		return 0, 0, err
	}
	if layer < 0 || layer >= l.Layers || kv < 0 || kv > 1 {
		return 0, 0, fmt.Errorf("%w: layer %d of %d, kv %d", codec.ErrSize, layer, l.Layers, kv)
	}
	return l.Bases.Add(8 * (2*layer + kv)), r.NumBlocks * l.BlockElems, nil
}

// GatherEncodeKVHighRatioWorkspaceSize is the workspace GatherEncodeKVHighRatioAsync (and
// GatherEncodeKVHighRatioDTypeAsync, for any dtype: it depends on the element count alone) needs.
func (l PagedLayout) GatherEncodeKVHighRatioWorkspaceSize(r PagedRequest) int {
	return hrWorkspaceSize(1, hrChunks(uint64(r.NumBlocks*l.BlockElems)))
}

// GatherEncodeKVHighRatioAsync encodes one layer's K (kv 0) or V (kv 1) blocks of a request, straight from the
// paged cache, into one high-ratio frame at dst, with the code table of tableLen bytes at table (see
// EncodeHighRatioAsync): the frame the CPU encoder writes for those blocks with that table. K and V get frames
// of their own so that each can have its own table. The frame's length goes to sizeOut (u64); ws is
// GatherEncodeKVHighRatioWorkspaceSize bytes (the call zeroes it). r.PerLayer is ignored.
func (c *Codec) GatherEncodeKVHighRatioAsync(s *cuda.Stream, l PagedLayout, r PagedRequest, layer, kv int, table cuda.DevicePtr, tableLen int, dst, sizeOut, ws cuda.DevicePtr) error {
	return c.GatherEncodeKVHighRatioDTypeAsync(s, codec.BF16, l, r, layer, kv, table, tableLen, dst, sizeOut, ws)
}

// GatherEncodeKVHighRatioDTypeAsync is GatherEncodeKVHighRatioAsync for a paged cache of dt (bf16, fp8_e4m3
// or fp8_e5m2): l's BlockElems and BlockStride count elements of dt (bytes, for fp8), and table is a code table
// for dt. An fp8 cache's blocks need only be 8-byte aligned (BlockStride a multiple of 8).
func (c *Codec) GatherEncodeKVHighRatioDTypeAsync(s *cuda.Stream, dt codec.DType, l PagedLayout, r PagedRequest, layer, kv int, table cuda.DevicePtr, tableLen int, dst, sizeOut, ws cuda.DevicePtr) error {
	k, err := c.hr.of(dt)
	if err != nil {
		return err
	}
	bases, elems, err := l.kvHalf(r, layer, kv)
	if err != nil {
		return err
	}
	if !aligned(dst) || sizeOut%8 != 0 || ws%8 != 0 {
		return ErrAlignment
	}
	p := &hrEncParams{
		src: uint64(bases), ids: uint64(r.BlockIDs), dst: uint64(dst), sizes: uint64(sizeOut), ws: uint64(ws),
		strideBytes: uint64(dt.Size()) * uint64(l.BlockStride), table: uint64(table), n: uint32(elems), frames: 1,
		chunks: uint32(hrChunks(uint64(elems))), blockElems: uint32(l.BlockElems), nBlocks: uint32(r.NumBlocks),
		segsPerFrame: uint32(r.NumBlocks), tableLen: uint32(tableLen),
	}
	return c.launchHREncode(s, k, p, 1)
}

// DecodeScatterKVHighRatioAsync decodes a frame of one layer's K (kv 0) or V (kv 1) blocks (what
// GatherEncodeKVHighRatioAsync writes, or a raw frame of them) at src, frameLen bytes readable there, into the
// request's blocks of that cache. The status word (see StatusError) goes to status.
func (c *Codec) DecodeScatterKVHighRatioAsync(s *cuda.Stream, src cuda.DevicePtr, frameLen int, l PagedLayout, r PagedRequest, layer, kv int, status cuda.DevicePtr) error {
	return c.DecodeScatterKVHighRatioDTypeAsync(s, codec.BF16, src, frameLen, l, r, layer, kv, status)
}

// DecodeScatterKVHighRatioDTypeAsync is DecodeScatterKVHighRatioAsync into a paged cache of dt (bf16,
// fp8_e4m3 or fp8_e5m2; l in elements of dt, as GatherEncodeKVHighRatioDTypeAsync takes it). A high-ratio frame
// of another dtype ends with StatusUnsupported.
func (c *Codec) DecodeScatterKVHighRatioDTypeAsync(s *cuda.Stream, dt codec.DType, src cuda.DevicePtr, frameLen int, l PagedLayout, r PagedRequest, layer, kv int, status cuda.DevicePtr) error {
	k, err := c.hr.of(dt)
	if err != nil {
		return err
	}
	bases, elems, err := l.kvHalf(r, layer, kv)
	if err != nil {
		return err
	}
	if frameLen < 0 {
		return fmt.Errorf("%w: frame of %d bytes", codec.ErrSize, frameLen)
	}
	if !aligned(src) || status%4 != 0 {
		return ErrAlignment
	}
	size := uint64(dt.Size())
	p := &hrDecParams{
		src: uint64(src), frameCap: uint64(frameLen), dst: uint64(bases), ids: uint64(r.BlockIDs),
		strideBytes: size * uint64(l.BlockStride), status: uint64(status), outBytes: size * uint64(elems), frames: 1,
		chunks: uint32(hrChunks(uint64(elems))), blockElems: uint32(l.BlockElems), nBlocks: uint32(r.NumBlocks),
		segsPerFrame: uint32(r.NumBlocks),
	}
	return c.launchHRDecode(s, k, p, 1)
}
