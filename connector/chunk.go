package connector

import (
	"fmt"

	"github.com/splitzip/splitzip/codec"
	szn "github.com/splitzip/splitzip/nats"
)

// A handoff moves as chunks ("frames" in the shard record and the transport), one per layer and run of up to
// BlocksPerFrame blocks, holding the layer's K blocks then its V blocks. In raw and fast mode a chunk is one
// codec frame; in high-ratio mode it is two, K's then V's, back to back, so that each is coded with its own
// (layer, K/V) table.

// chunk is a received chunk split into its codec frames.
type chunk struct {
	frames [2][]byte
	hdrs   [2]codec.Header
	n      int // frames: 1 or 2
}

// chunkCap is the staging a chunk of n raw bytes needs: the bound of the high-ratio mode's two frames, on every
// path. Staging keeps released buffers for reuse only where they are big enough, so a raw or fast chunk taking
// a header less would leave every high-ratio handoff after it allocating (and faulting in) fresh buffers where
// the auto policy mixes modes: on a 2-core VM that was an eighth of a high-ratio transfer's CPU time.
func chunkCap(n int) int { return codec.MaxEncodedLen(n) + codec.HeaderSize }

// parseChunk splits b into its codec frames and checks them against the record (raw, frame mode) and the
// want raw bytes its blocks hold: one frame of want bytes (raw for a raw record, not high-ratio for a fast
// one), or in high-ratio mode two of want/2 bytes each, each high-ratio or raw. Only headers are read.
func parseChunk(b []byte, raw bool, mode string, want uint64) (chunk, error) {
	var c chunk
	parts, size := 1, want
	if mode == szn.FrameModeHighRatio {
		parts, size = 2, want/2
	}
	rest := b
	for i := range parts {
		f, r, err := codec.SplitFrame(rest)
		if err != nil {
			return c, err
		}
		h, _ := codec.ParseHeader(f)
		if err := checkFrame(h, raw, mode, size, i, parts); err != nil {
			return c, err
		}
		c.frames[i], c.hdrs[i], rest = f, h, r
	}
	if len(rest) > 0 {
		return c, fmt.Errorf("%d bytes after the chunk's %d codec frame(s)", len(rest), parts)
	}
	c.n = parts
	return c, nil
}

// checkFrame checks codec frame i of a chunk of parts frames, by its header, against the record (raw, frame
// mode) and the size raw bytes it must decode to.
func checkFrame(h codec.Header, raw bool, mode string, size uint64, i, parts int) error {
	switch {
	case raw && !h.Raw:
		return fmt.Errorf("a %s frame in a raw handoff", h.Mode())
	case mode == szn.FrameModeHighRatio && !h.Raw && !h.Entropy:
		return fmt.Errorf("a %s frame in a high-ratio handoff", h.Mode())
	case mode != szn.FrameModeHighRatio && h.Entropy:
		return fmt.Errorf("a high-ratio frame in a %s handoff", mode)
	case h.RawLen() != size:
		return fmt.Errorf("codec frame %d of %d decodes to %d bytes, the blocks need %d", i+1, parts, h.RawLen(), size)
	}
	return nil
}
