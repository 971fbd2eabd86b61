package kernels

import (
	"fmt"
	"math"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/kernels/cuda"
)

// PagedLayout describes a paged bf16 KV cache (vLLM's): per layer a K cache and a V cache made of blocks,
// each block BlockElems contiguous elements (block_size × kv_heads × head_dim), block b starting
// BlockStride elements after block b-1.
//
// vLLM's FlashAttention layout, one tensor [2, num_blocks, block_size, heads, head_dim] per layer: K base =
// data_ptr, V base = data_ptr + num_blocks × BlockStride × 2 bytes, BlockStride = BlockElems. FlashInfer's
// [num_blocks, 2, block_size, heads, head_dim]: V base = K base + BlockElems × 2 bytes, BlockStride =
// 2 × BlockElems.
type PagedLayout struct {
	// Bases is a device array of 2 × Layers uint64 addresses: K of layer 0, V of layer 0, K of layer 1, …
	// Each must be 16-byte aligned.
	Bases       cuda.DevicePtr
	Layers      int
	BlockElems  int // elements of one block of K (or V) of one layer; a multiple of 8
	BlockStride int // elements from one block to the next; a multiple of 8
}

// PagedRequest is the part of the cache a transfer moves: NumBlocks block ids (a device array of int32,
// vLLM's block table row) of every layer.
type PagedRequest struct {
	BlockIDs  cuda.DevicePtr
	NumBlocks int
	// PerLayer makes one frame per layer (K blocks then V blocks) instead of one frame for the whole request
	// (layer by layer, K blocks then V blocks of each).
	PerLayer bool
}

// Frames returns the number of frames of a paged transfer and the bf16 elements each holds.
func (l PagedLayout) Frames(r PagedRequest) (frames, elems int) {
	per := 2 * r.NumBlocks * l.BlockElems
	if r.PerLayer {
		return l.Layers, per
	}
	return 1, l.Layers * per
}

// FrameStride is the spacing of per-layer frames in a gather-encode's output: the largest frame, rounded
// to 16 bytes. Frame f of a transfer starts at dst + f × FrameStride; its length is sizes[f].
func (l PagedLayout) FrameStride(r PagedRequest) int {
	_, elems := l.Frames(r)
	return int(align16(uint64(MaxEncodedLen(2 * elems))))
}

// GatherEncodeWorkspaceSize is the workspace GatherEncodeAsync needs.
func (l PagedLayout) GatherEncodeWorkspaceSize(r PagedRequest) int {
	frames, elems := l.Frames(r)
	return workspaceSize(uint64(frames), chunksOf(uint64(elems)))
}

func (l PagedLayout) check(r PagedRequest) error {
	if l.Layers < 1 || r.NumBlocks < 1 || l.BlockElems < 8 || l.BlockElems%8 != 0 || l.BlockStride < l.BlockElems || l.BlockStride%8 != 0 {
		return fmt.Errorf("%w: paged layout %d layers, blocks of %d elements every %d, %d blocks", codec.ErrSize,
			l.Layers, l.BlockElems, l.BlockStride, r.NumBlocks)
	}
	if _, elems := l.Frames(r); uint64(elems) > math.MaxUint32 || uint64(2*l.Layers*r.NumBlocks) > math.MaxUint32 {
		return fmt.Errorf("%w: %d elements in a frame; use PerLayer", codec.ErrSize, elems)
	}
	if !aligned(l.Bases) || r.BlockIDs%4 != 0 {
		return ErrAlignment
	}
	return nil
}

// checkScatter validates a decode-scatter's arguments and returns its frames and their elements.
func (l PagedLayout) checkScatter(r PagedRequest, src cuda.DevicePtr, frameStride, frameCap int, status cuda.DevicePtr) (frames, elems int, err error) {
	if err := l.check(r); err != nil {
		return 0, 0, err
	}
	if !aligned(src) || frameStride%16 != 0 || status%4 != 0 {
		return 0, 0, ErrAlignment
	}
	frames, elems = l.Frames(r)
	if frames > 1 && frameCap > frameStride {
		return 0, 0, fmt.Errorf("%w: frames %d bytes apart, %d bytes readable from each", codec.ErrSize, frameStride, frameCap)
	}
	return frames, elems, nil
}

func (l PagedLayout) segsPerFrame(r PagedRequest) uint32 {
	_, elems := l.Frames(r)
	return uint32(elems / l.BlockElems)
}

// GatherEncodeAsync enqueues on s the encoding of a request's blocks straight from the paged cache, with no
// gather copy: into one frame, or one frame per layer, starting FrameStride apart at dst (16-byte aligned,
// Frames × FrameStride bytes). Each frame is byte-identical to what the CPU encoder writes for the gathered
// tensor. Frame lengths are written to sizesOut (one little-endian uint64 per frame); ws is
// GatherEncodeWorkspaceSize bytes of device memory, zero before its first use and left ready for the next
// call (see EncodeWorkspaceSize).
func (c *Codec) GatherEncodeAsync(s *cuda.Stream, l PagedLayout, r PagedRequest, cb *codec.Codebook, dst, sizesOut, ws cuda.DevicePtr) error {
	words, err := codebookWords(cb)
	if err != nil {
		return err
	}
	if err := l.check(r); err != nil {
		return err
	}
	if !aligned(dst) || sizesOut%8 != 0 || ws%8 != 0 {
		return ErrAlignment
	}
	frames, elems := l.Frames(r)
	p := &encParams{
		src: uint64(l.Bases), ids: uint64(r.BlockIDs), dst: uint64(dst), frameStride: uint64(l.FrameStride(r)),
		sizes: uint64(sizesOut), ws: uint64(ws), strideBytes: 2 * uint64(l.BlockStride),
		n: uint32(elems), frames: uint32(frames), chunks: uint32(chunksOf(uint64(elems))),
		blockElems: uint32(l.BlockElems), nBlocks: uint32(r.NumBlocks), segsPerFrame: l.segsPerFrame(r), codebook: words,
	}
	return c.launchEncode(s, p, true)
}

// DecodeScatterAsync enqueues on s the decoding of a request's frames (as GatherEncodeAsync lays them out:
// frame f at src + f × frameStride, frameCap bytes readable from each) straight into the blocks r.BlockIDs of
// the paged cache l, which may differ from the sender's. The first error found is written to status (a
// uint32, StatusOK when all frames decoded).
func (c *Codec) DecodeScatterAsync(s *cuda.Stream, src cuda.DevicePtr, frameStride, frameCap int, l PagedLayout, r PagedRequest, status cuda.DevicePtr) error {
	frames, elems, err := l.checkScatter(r, src, frameStride, frameCap, status)
	if err != nil {
		return err
	}
	chunks := chunksOf(uint64(elems))
	p := &decParams{
		src: uint64(src), frameStride: uint64(frameStride), frameCap: uint64(frameCap), dst: uint64(l.Bases),
		ids: uint64(r.BlockIDs), strideBytes: 2 * uint64(l.BlockStride), status: uint64(status), outBytes: 2 * uint64(elems),
		frames: uint32(frames), chunks: uint32(chunks), blockElems: uint32(l.BlockElems), nBlocks: uint32(r.NumBlocks),
		segsPerFrame: l.segsPerFrame(r),
	}
	return c.launchDecode(s, p, true)
}
