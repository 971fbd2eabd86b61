package kernels

import (
	"fmt"
	"math"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/kernels/cuda"
)

// Raw block copies (blocks.cuh): a request's blocks of a paged cache gathered into, or scattered from, one
// contiguous buffer in a single launch. A handoff's raw frames take this path when they stay in GPU memory,
// where one copy per block would cost more to enqueue than to run.
const (
	blockCopyName    = "sz_copy_blocks"
	blockCopyThreads = 256     // kBlockCopyThreads
	blockCopyGrid    = 1 << 16 // blocks at most; each loops over segments beyond
)

// GatherBlocksAsync enqueues on s the copy of request r's blocks of the paged cache l, holding elements of
// dtype dt, to dst: for each layer its K blocks then its V blocks, in the order of r.BlockIDs, back to back
// (for one layer, what a raw frame's payload holds). BlockElems and BlockStride count elements of dt; block
// bytes, strides, Bases and dst must be 16-byte aligned. The copy is dense and stream-ordered; dst holds
// BlockBytes(l, r, dt) bytes.
func (c *Codec) GatherBlocksAsync(s *cuda.Stream, dt codec.DType, l PagedLayout, r PagedRequest, dst cuda.DevicePtr) error {
	return c.copyBlocks(s, dt, l, r, dst, true)
}

// ScatterBlocksAsync enqueues on s the inverse of GatherBlocksAsync: the bytes at src, laid out as it writes
// them, into request r's blocks of the paged cache l (whose ids may differ from the sender's).
func (c *Codec) ScatterBlocksAsync(s *cuda.Stream, dt codec.DType, src cuda.DevicePtr, l PagedLayout, r PagedRequest) error {
	return c.copyBlocks(s, dt, l, r, src, false)
}

// BlockBytes returns the bytes GatherBlocksAsync writes for request r of layout l, holding dtype dt.
func BlockBytes(l PagedLayout, r PagedRequest, dt codec.DType) int {
	return 2 * l.Layers * r.NumBlocks * l.BlockElems * dt.Size()
}

func (c *Codec) copyBlocks(s *cuda.Stream, dt codec.DType, l PagedLayout, r PagedRequest, buf cuda.DevicePtr, gather bool) error {
	size := dt.Size()
	if size == 0 {
		return fmt.Errorf("%w: %v", codec.ErrDType, dt)
	}
	if l.Layers < 1 || r.NumBlocks < 1 || l.BlockElems < 1 || l.BlockStride < l.BlockElems ||
		uint64(2*l.Layers)*uint64(r.NumBlocks) > math.MaxUint32 {
		return fmt.Errorf("%w: paged layout %d layers, blocks of %d elements every %d, %d blocks", codec.ErrSize,
			l.Layers, l.BlockElems, l.BlockStride, r.NumBlocks)
	}
	segBytes, strideBytes := uint64(l.BlockElems*size), uint64(l.BlockStride*size)
	if !aligned(l.Bases) || !aligned(buf) || segBytes%16 != 0 || strideBytes%16 != 0 || r.BlockIDs%4 != 0 {
		return ErrAlignment
	}
	segs := uint32(2 * l.Layers * r.NumBlocks)
	var dir uint32
	if gather {
		dir = 1
	}
	args := cuda.NewArgs().Ptr(l.Bases).Ptr(r.BlockIDs).Ptr(buf).U64(strideBytes).U64(segBytes).
		U32(uint32(r.NumBlocks)).U32(segs).U32(dir).U32(0)
	return c.blockCopy.Launch(s, cuda.Dim3{X: min(segs, blockCopyGrid)}, cuda.Dim3{X: blockCopyThreads}, 0, args)
}
