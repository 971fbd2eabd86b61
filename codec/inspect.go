package codec

import (
	"encoding/binary"
	"fmt"
)

// FrameInfo describes a frame for people: its header, codebook and how escapes spread over chunks.
type FrameInfo struct {
	Header   Header
	Codebook []uint8 // nil for raw frames
	// Per-chunk escape counts: the smallest, the largest, and how many chunks have none.
	ChunkEscapesMin, ChunkEscapesMax uint64
	ChunksWithoutEscapes             uint64
	// EscapedExponents counts escapes by the exponent they carry.
	EscapedExponents map[uint8]uint64
}

// EscapeRate is escapes per element.
func (fi *FrameInfo) EscapeRate() float64 {
	if fi.Header.Elements == 0 {
		return 0
	}
	return float64(fi.Header.Escapes) / float64(fi.Header.Elements)
}

// Inspect validates a frame's header and escape table and summarises it without decoding the payload.
func Inspect(frame []byte) (*FrameInfo, error) {
	h, err := checkFrame(frame)
	if err != nil {
		return nil, err
	}
	fi := &FrameInfo{Header: h, EscapedExponents: map[uint8]uint64{}}
	if h.Raw {
		return fi, nil
	}
	lay := h.Layout()
	fi.Codebook = append([]uint8(nil), frame[lay.Codebook:lay.Codebook+uint64(h.CodebookLen)]...)
	fi.ChunkEscapesMin = ^uint64(0)
	for c := uint64(0); c < lay.Chunks; c++ {
		lo := uint64(binary.LittleEndian.Uint32(frame[lay.Table+4*c:]))
		hi := h.Escapes
		if c+1 < lay.Chunks {
			hi = uint64(binary.LittleEndian.Uint32(frame[lay.Table+4*c+4:]))
		}
		if lo > hi || hi > h.Escapes {
			return nil, fmt.Errorf("%w: chunk %d escapes [%d, %d) of %d", ErrCorrupt, c, lo, hi, h.Escapes)
		}
		fi.ChunkEscapesMin = min(fi.ChunkEscapesMin, hi-lo)
		fi.ChunkEscapesMax = max(fi.ChunkEscapesMax, hi-lo)
		if hi == lo {
			fi.ChunksWithoutEscapes++
		}
	}
	if lay.Chunks == 0 {
		fi.ChunkEscapesMin = 0
	}
	for k := uint64(0); k < h.Escapes; k++ {
		fi.EscapedExponents[frame[lay.Escapes+escapeSize*k+2]]++
	}
	return fi, nil
}
