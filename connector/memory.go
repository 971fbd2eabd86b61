package connector

import (
	"fmt"
	"hash/crc32"
	"unsafe"
)

// hostCache is a rank's KV cache in host memory: one base address per layer (the engine's tensors, e.g. numpy
// or CPU torch storage passed through Python as integers). The connector reads and writes it in place.
type hostCache struct {
	layout Layout
	bases  []uintptr

	hugeStop, hugeDone chan struct{} // the background huge-page collapse (startHugePages), if started
}

func newHostCache(l Layout, bases []uintptr) (*hostCache, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	if len(bases) != l.Layers {
		return nil, fmt.Errorf("%w: %d base addresses for %d layers", ErrLayout, len(bases), l.Layers)
	}
	for i, b := range bases {
		if b == 0 {
			return nil, fmt.Errorf("%w: layer %d base address is null", ErrLayout, i)
		}
	}
	return &hostCache{layout: l, bases: append([]uintptr(nil), bases...)}, nil
}

// block returns block b of layer l's K (kv = 0) or V (kv = 1) as a byte slice over the engine's memory.
func (c *hostCache) block(l, kv, b int) []byte {
	return unsafe.Slice((*byte)(ptr(c.blockAddr(l, kv, b))), c.layout.BlockBytes())
}

// blockAddr is where block b of layer l's K (kv = 0) or V (kv = 1) starts.
func (c *hostCache) blockAddr(l, kv, b int) uintptr {
	return c.bases[l] + uintptr(int64(kv)*c.layout.KVOffset+int64(b)*c.layout.BlockStride)
}

// ptr turns an address the engine gave us into a pointer. The memory is not Go's (or is pinned by the caller),
// so the garbage collector neither moves nor frees it.
func ptr(addr uintptr) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&addr)) }

// gatherLayer copies layer l's K blocks, then its V blocks, in the order of blocks, into dst (the layer frame's
// raw form) and returns crc extended by the CRC-32C of what it copied: each block is checksummed right after
// its copy, while it is in cache, rather than in a pass over the whole frame after.
func (c *hostCache) gatherLayer(dst []byte, l int, blocks []int, crc uint32) uint32 {
	n := int(c.layout.BlockBytes())
	for kv := range 2 {
		for i, b := range blocks {
			piece := dst[(kv*len(blocks)+i)*n:][:n]
			copy(piece, c.block(l, kv, b))
			crc = crc32.Update(crc, castagnoli, piece)
		}
	}
	return crc
}

// layerSegments sets segs to layer l's K blocks, then its V blocks, in the order of blocks, as slices over the
// engine's memory (blocks that lie back to back become one slice): the layer frame's raw form, in place, for
// the codec's EncodeSegments and DecodeSegments.
func (c *hostCache) layerSegments(segs [][]byte, l int, blocks []int) [][]byte {
	return c.segments(segs, l, 0, 2, blocks)
}

// kvSegments is layerSegments of layer l's K blocks (kv 0) or V blocks (kv 1) alone.
func (c *hostCache) kvSegments(segs [][]byte, l, kv int, blocks []int) [][]byte {
	return c.segments(segs, l, kv, kv+1, blocks)
}

func (c *hostCache) segments(segs [][]byte, l, kv0, kv1 int, blocks []int) [][]byte {
	n := uintptr(c.layout.BlockBytes())
	segs = segs[:0]
	var start, end uintptr
	for kv := kv0; kv < kv1; kv++ {
		for _, b := range blocks {
			addr := c.blockAddr(l, kv, b)
			if addr == end && end != 0 {
				end += n
				continue
			}
			if end != 0 {
				segs = append(segs, unsafe.Slice((*byte)(ptr(start)), end-start))
			}
			start, end = addr, addr+n
		}
	}
	if end != 0 {
		segs = append(segs, unsafe.Slice((*byte)(ptr(start)), end-start))
	}
	return segs
}

// scatterKV writes raw bytes of layer l's K blocks (kv 0) or V blocks (kv 1), in the order of blocks.
func (c *hostCache) scatterKV(src []byte, l, kv int, blocks []int) {
	n := int(c.layout.BlockBytes())
	for i, b := range blocks {
		copy(c.block(l, kv, b), src[i*n:][:n])
	}
}

// scatterLayer is the inverse of gatherLayer: it writes a layer's raw K-then-V bytes into blocks.
func (c *hostCache) scatterLayer(src []byte, l int, blocks []int) {
	n := int(c.layout.BlockBytes())
	for kv := range 2 {
		for i, b := range blocks {
			copy(c.block(l, kv, b), src[(kv*len(blocks)+i)*n:][:n])
		}
	}
}
