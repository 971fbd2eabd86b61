package connector

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/splitzip/splitzip/codec"
)

// Layout describes how one rank's paged KV cache sits in memory. Nothing about a model is hard-coded: the
// engine binding reads these figures from its tensors and attention backend.
//
// A block holds BlockSize tokens of one layer's K (or V): BlockSize × KVHeads × HeadSize elements, contiguous.
// Block b of layer l starts at Bases[l] + b×BlockStride for K and Bases[l] + KVOffset + b×BlockStride for V.
// That covers vLLM's layouts: [2, num_blocks, block_size, heads, head] (KVOffset = num_blocks × BlockStride)
// and [num_blocks, 2, block_size, heads, head] (BlockStride = 2 × block bytes, KVOffset = block bytes).
type Layout struct {
	Model     string      `json:"model,omitempty"` // part of the fingerprint: peers must serve the same model
	Layers    int         `json:"layers"`
	BlockSize int         `json:"block_size"` // tokens per block
	KVHeads   int         `json:"kv_heads"`   // KV heads held by this rank
	HeadSize  int         `json:"head_size"`
	DType     codec.DType `json:"dtype"`
	TPSize    int         `json:"tp_size"` // tensor-parallel ranks on the engine (1 without TP)

	NumBlocks   int   `json:"num_blocks"`   // blocks per layer in this rank's cache (bounds block ids)
	BlockStride int64 `json:"block_stride"` // bytes between consecutive blocks of one layer's K
	KVOffset    int64 `json:"kv_offset"`    // bytes from a layer's K region to its V region
}

// BlockBytes is the size of one block of one layer's K (or V).
func (l *Layout) BlockBytes() int64 {
	return int64(l.BlockSize) * int64(l.KVHeads) * int64(l.HeadSize) * int64(l.DType.Size())
}

// Validate reports what is wrong with a layout, in words that say what to fix.
func (l *Layout) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrLayout}, args...)...)
	}
	switch {
	case l.Layers <= 0:
		return bad("layers = %d, must be positive", l.Layers)
	case l.BlockSize <= 0 || l.KVHeads <= 0 || l.HeadSize <= 0:
		return bad("block size %d, KV heads %d, head size %d: all must be positive", l.BlockSize, l.KVHeads, l.HeadSize)
	case !l.DType.Valid():
		return bad("unknown dtype %d", uint8(l.DType))
	case l.TPSize <= 0:
		return bad("tensor-parallel size %d, must be ≥ 1", l.TPSize)
	case l.NumBlocks <= 0:
		return bad("num blocks %d, must be positive", l.NumBlocks)
	case l.BlockStride < l.BlockBytes():
		return bad("block stride %d bytes is smaller than a block (%d bytes)", l.BlockStride, l.BlockBytes())
	case l.KVOffset < l.BlockBytes() && l.KVOffset > -l.BlockBytes():
		return bad("K and V of a block overlap (KV offset %d, block %d bytes)", l.KVOffset, l.BlockBytes())
	}
	return nil
}

// Fingerprint identifies what producer and consumer must agree on to exchange blocks: model, layer count,
// block size, heads per rank, head size, dtype and TP size. Strides and block counts are local to each side.
func (l *Layout) Fingerprint() string {
	s := fmt.Sprintf("splitzip-layout-v1|%s|%d|%d|%d|%d|%s|%d", l.Model, l.Layers, l.BlockSize, l.KVHeads, l.HeadSize, l.DType, l.TPSize)
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:12])
}

// checkBlocks validates block ids against the layout.
func (l *Layout) checkBlocks(blocks []int) error {
	if len(blocks) == 0 {
		return fmt.Errorf("%w: no blocks", ErrBlocks)
	}
	for _, b := range blocks {
		if b < 0 || b >= l.NumBlocks {
			return fmt.Errorf("%w: block id %d outside [0, %d)", ErrBlocks, b, l.NumBlocks)
		}
	}
	return nil
}

// layerRawBytes is the size of one layer's K and V for n blocks: what a frame of n blocks holds.
func (l *Layout) layerRawBytes(n int) int64 { return 2 * int64(n) * l.BlockBytes() }

// framing splits a handoff into frames, the unit of pipelining: layer-major, each frame holding K then V of up
// to per consecutive blocks (in the request's order) of one layer. Bounded frames keep chunks on the wire
// small (memory per connection, time to first byte) however long the request.
type framing struct{ layers, blocks, per int }

func newFraming(l *Layout, blocks int, frameBytes int64) framing {
	per := max(1, int(frameBytes/(2*l.BlockBytes())))
	return framing{layers: l.Layers, blocks: blocks, per: min(per, blocks)}
}

func (f framing) groups() int { return (f.blocks + f.per - 1) / f.per }
func (f framing) frames() int { return f.layers * f.groups() }

// frame returns frame i's layer and its range of the request's blocks.
func (f framing) frame(i int) (layer, lo, hi int) {
	g := f.groups()
	layer, lo = i/g, (i%g)*f.per
	return layer, lo, min(lo+f.per, f.blocks)
}
