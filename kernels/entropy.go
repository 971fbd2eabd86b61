package kernels

import (
	"fmt"
	"math"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/kernels/cuda"
)

// The high-ratio mode's kernels (entropy.cuh): format v2 frames with Huffman-coded exponents.
const (
	hrChunkElems  = 1 << 14 // elements per chunk (kHRChunk)
	hrEncodeWarps = 4       // chunks per encode block, a warp each
	hrDecodeWarps = 8       // chunks per decode block
	hrRawThreads  = 256
	// funcMaxDynamicSharedSize is CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: the encoder keeps each
	// warp's 16 KiB of exponents in dynamic shared memory, above the 48 KiB a launch gets by default.
	funcMaxDynamicSharedSize cuda.FuncAttribute = 8
	hrEncodeSmem                                = hrEncodeWarps * hrChunkElems
	// maxTableLen is the longest code table a bf16 frame carries: lo, hi and 257 four-bit lengths.
	maxTableLen = 2 + 129
)

// The high-ratio kernels' entry points (splitzip.cu), each _dense and _paged.
const (
	hrEncoderName = "sz_hr_encode"
	hrRawName     = "sz_hr_raw"
	hrDecoderName = "sz_hr_decode"
)

type hrKernels struct {
	enc, raw, dec [2]*cuda.Function // dense, paged
}

func loadHighRatio(mod *cuda.Module) (*hrKernels, error) {
	k := new(hrKernels)
	for i, kind := range []string{"_dense", "_paged"} {
		var err error
		if k.enc[i], err = mod.Function(hrEncoderName + kind); err != nil {
			return nil, err
		}
		if err := k.enc[i].SetAttribute(funcMaxDynamicSharedSize, hrEncodeSmem); err != nil {
			return nil, fmt.Errorf("splitzip: high-ratio encoder's shared memory: %w", err)
		}
		if k.raw[i], err = mod.Function(hrRawName + kind); err != nil {
			return nil, err
		}
		if k.dec[i], err = mod.Function(hrDecoderName + kind); err != nil {
			return nil, err
		}
	}
	return k, nil
}

func hrChunks(n uint64) uint64 { return max(1, (n+hrChunkElems-1)/hrChunkElems) }

// hrStreamsOffset is where a high-ratio frame's exponent streams start (hr_layout in entropy.cuh).
func hrStreamsOffset(n, chunks, tableLen uint64) uint64 {
	return align16(align16(align16(headerSize+tableLen)+4*chunks) + n)
}

// hrWorkspaceSize is the encode workspace of frames frames of chunks chunks: four words per frame, then a
// look-back state word per chunk (hr_ws_* in entropy.cuh).
func hrWorkspaceSize(frames, chunks uint64) int { return int(16*frames + 8*frames*chunks) }

// HighRatioWorkspaceSize is the device workspace EncodeHighRatioAsync needs for srcLen bytes of bf16.
func HighRatioWorkspaceSize(srcLen int) int { return hrWorkspaceSize(1, hrChunks(uint64(srcLen/2))) }

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

func (c *Codec) launchHREncode(s *cuda.Stream, p *hrEncParams, paged int) error {
	if p.tableLen < 3 || p.tableLen > maxTableLen {
		return fmt.Errorf("%w: code table of %d bytes", codec.ErrCodebook, p.tableLen)
	}
	// Too small for a high-ratio frame even with empty streams (the CPU encoder decides the same): raw.
	n := uint64(p.n)
	if hrStreamsOffset(n, uint64(p.chunks), uint64(p.tableLen)) >= headerSize+2*n {
		p.rawOnly = 1
	}
	if err := s.MemsetD8Async(cuda.DevicePtr(p.ws), 0, hrWorkspaceSize(uint64(p.frames), uint64(p.chunks))); err != nil {
		return err
	}
	total := uint64(p.frames) * uint64(p.chunks)
	grid := cuda.Dim3{X: uint32((total + hrEncodeWarps - 1) / hrEncodeWarps)}
	if err := c.hr.enc[paged].Launch(s, grid, cuda.Dim3{X: 32 * hrEncodeWarps}, hrEncodeSmem, p.args()); err != nil {
		return err
	}
	units := (n + 7) / 8
	rawGrid := cuda.Dim3{X: uint32(max(1, min(rawGridLimit, (units+hrRawThreads-1)/hrRawThreads)))}
	return c.hr.raw[paged].Launch(s, rawGrid, cuda.Dim3{X: hrRawThreads}, 0, p.args())
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
	if srcLen < 0 || srcLen%2 != 0 || srcLen/2 > math.MaxInt32 {
		return fmt.Errorf("%w: %d bytes of bf16", codec.ErrSize, srcLen)
	}
	if !aligned(src) || !aligned(dst) || sizeOut%8 != 0 || ws%8 != 0 {
		return ErrAlignment
	}
	n := uint64(srcLen / 2)
	p := &hrEncParams{
		src: uint64(src), dst: uint64(dst), sizes: uint64(sizeOut), ws: uint64(ws), table: uint64(table),
		n: uint32(n), frames: 1, chunks: uint32(hrChunks(n)), tableLen: uint32(tableLen),
	}
	return c.launchHREncode(s, p, 0)
}

// DecodeHighRatioAsync enqueues on s the decoding of the frame at src (frameLen bytes readable there) into dst,
// which receives exactly dstLen bytes. It decodes format-v2 high-ratio bf16 frames and raw frames; the status
// word (see StatusError) is written to status.
func (c *Codec) DecodeHighRatioAsync(s *cuda.Stream, src cuda.DevicePtr, frameLen int, dst cuda.DevicePtr, dstLen int, status cuda.DevicePtr) error {
	if dstLen < 0 || frameLen < 0 || dstLen%2 != 0 {
		return fmt.Errorf("%w: frame %d bytes, destination %d bytes", codec.ErrSize, frameLen, dstLen)
	}
	if !aligned(src) || !aligned(dst) || status%4 != 0 {
		return ErrAlignment
	}
	p := &hrDecParams{
		src: uint64(src), frameCap: uint64(frameLen), dst: uint64(dst), status: uint64(status),
		outBytes: uint64(dstLen), frames: 1, chunks: uint32(hrChunks(uint64(dstLen / 2))),
	}
	return c.launchHRDecode(s, p, 0)
}

func (c *Codec) launchHRDecode(s *cuda.Stream, p *hrDecParams, paged int) error {
	if err := s.MemsetD32Async(cuda.DevicePtr(p.status), 0, 1); err != nil {
		return err
	}
	bpf := (uint64(p.chunks) + hrDecodeWarps - 1) / hrDecodeWarps
	grid := cuda.Dim3{X: uint32(uint64(p.frames) * bpf)}
	return c.hr.dec[paged].Launch(s, grid, cuda.Dim3{X: 32 * hrDecodeWarps}, 0, p.args())
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
	return c.launchHREncode(s, p, 1)
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
	return c.launchHRDecode(s, p, 1)
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

// GatherEncodeKVHighRatioWorkspaceSize is the workspace GatherEncodeKVHighRatioAsync needs.
func (l PagedLayout) GatherEncodeKVHighRatioWorkspaceSize(r PagedRequest) int {
	return hrWorkspaceSize(1, hrChunks(uint64(r.NumBlocks*l.BlockElems)))
}

// GatherEncodeKVHighRatioAsync encodes one layer's K (kv 0) or V (kv 1) blocks of a request, straight from the
// paged cache, into one high-ratio frame at dst, with the code table of tableLen bytes at table (see
// EncodeHighRatioAsync): the frame the CPU encoder writes for those blocks with that table. K and V get frames
// of their own so that each can have its own table. The frame's length goes to sizeOut (u64); ws is
// GatherEncodeKVHighRatioWorkspaceSize bytes (the call zeroes it). r.PerLayer is ignored.
func (c *Codec) GatherEncodeKVHighRatioAsync(s *cuda.Stream, l PagedLayout, r PagedRequest, layer, kv int, table cuda.DevicePtr, tableLen int, dst, sizeOut, ws cuda.DevicePtr) error {
	bases, elems, err := l.kvHalf(r, layer, kv)
	if err != nil {
		return err
	}
	if !aligned(dst) || sizeOut%8 != 0 || ws%8 != 0 {
		return ErrAlignment
	}
	p := &hrEncParams{
		src: uint64(bases), ids: uint64(r.BlockIDs), dst: uint64(dst), sizes: uint64(sizeOut), ws: uint64(ws),
		strideBytes: 2 * uint64(l.BlockStride), table: uint64(table), n: uint32(elems), frames: 1,
		chunks: uint32(hrChunks(uint64(elems))), blockElems: uint32(l.BlockElems), nBlocks: uint32(r.NumBlocks),
		segsPerFrame: uint32(r.NumBlocks), tableLen: uint32(tableLen),
	}
	return c.launchHREncode(s, p, 1)
}

// DecodeScatterKVHighRatioAsync decodes a frame of one layer's K (kv 0) or V (kv 1) blocks (what
// GatherEncodeKVHighRatioAsync writes, or a raw frame of them) at src, frameLen bytes readable there, into the
// request's blocks of that cache. The status word (see StatusError) goes to status.
func (c *Codec) DecodeScatterKVHighRatioAsync(s *cuda.Stream, src cuda.DevicePtr, frameLen int, l PagedLayout, r PagedRequest, layer, kv int, status cuda.DevicePtr) error {
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
	p := &hrDecParams{
		src: uint64(src), frameCap: uint64(frameLen), dst: uint64(bases), ids: uint64(r.BlockIDs),
		strideBytes: 2 * uint64(l.BlockStride), status: uint64(status), outBytes: 2 * uint64(elems), frames: 1,
		chunks: uint32(hrChunks(uint64(elems))), blockElems: uint32(l.BlockElems), nBlocks: uint32(r.NumBlocks),
		segsPerFrame: uint32(r.NumBlocks),
	}
	return c.launchHRDecode(s, p, 1)
}
