package codec

import (
	"encoding/binary"
	"fmt"
)

// FrameInfo describes a frame for people: its header, codebook or code table, and how escapes or exponent
// streams spread over chunks.
type FrameInfo struct {
	Header   Header
	Codebook []uint8 // fast-mode frames; nil otherwise
	// CodeTable is an entropy frame's exponent code (nil otherwise).
	CodeTable *CodeTable
	// Per-chunk escape counts of a fast-mode frame: the smallest, the largest, and how many chunks have none.
	ChunkEscapesMin, ChunkEscapesMax uint64
	ChunksWithoutEscapes             uint64
	// EscapedExponents counts a fast-mode frame's escapes by the exponent they carry (entropy frames keep
	// theirs inline in the streams: Header.Escapes counts them).
	EscapedExponents map[uint8]uint64
	// Per-chunk exponent stream sizes of an entropy frame, in bytes: the smallest and the largest.
	ChunkStreamMin, ChunkStreamMax uint64
}

// ExponentBits is the mean number of bits an exponent takes in the frame's codes or streams (0 for raw
// frames): 4 in fast mode (plus escapes, counted separately), about 2.7–3 for real KV in an entropy frame.
func (fi *FrameInfo) ExponentBits() float64 {
	if fi.Header.Raw || fi.Header.Elements == 0 {
		return 0
	}
	return 8 * float64(fi.Header.CodesLen) / float64(fi.Header.Elements)
}

// EscapeRate is escapes per element.
func (fi *FrameInfo) EscapeRate() float64 {
	if fi.Header.Elements == 0 {
		return 0
	}
	return float64(fi.Header.Escapes) / float64(fi.Header.Elements)
}

// Inspect validates a frame's header, payload checksum (when it has one) and tables (escape table, or code
// table and chunk table) and summarises it without decoding the payload.
func Inspect(frame []byte) (*FrameInfo, error) {
	h, err := checkFrame(frame)
	if err != nil {
		return nil, err
	}
	if h.Checksum {
		if got := crcOf(frame[HeaderSize:]); got != h.PayloadCRC {
			return nil, fmt.Errorf("%w: stored %08x, computed %08x", ErrChecksum, h.PayloadCRC, got)
		}
	}
	fi := &FrameInfo{Header: h, EscapedExponents: map[uint8]uint64{}}
	if h.Raw {
		return fi, nil
	}
	if h.Entropy {
		return fi, inspectEntropy(fi, frame)
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

func inspectEntropy(fi *FrameInfo, frame []byte) error {
	h := &fi.Header
	lay := h.Layout()
	eb := h.DType.ExponentBits()
	t := &CodeTable{DType: h.DType, Lengths: make([]uint8, 1<<eb+1)}
	maxLen, err := readCodeTable(frame[lay.Codebook:lay.Codebook+uint64(h.CodebookLen)], h.DType, t.Lengths)
	if err != nil {
		return err
	}
	if maxLen != int(h.CodeBits) {
		return fmt.Errorf("%w: longest code is %d bits, the header says %d", ErrCorrupt, maxLen, h.CodeBits)
	}
	fi.CodeTable = t
	fi.ChunkStreamMin = ^uint64(0)
	for c := uint64(0); c < lay.Chunks; c++ {
		lo := uint64(binary.LittleEndian.Uint32(frame[lay.Table+4*c:]))
		hi := h.CodesLen
		if c+1 < lay.Chunks {
			hi = uint64(binary.LittleEndian.Uint32(frame[lay.Table+4*c+4:]))
		}
		if (c == 0 && lo != 0) || lo > hi || hi > h.CodesLen {
			return fmt.Errorf("%w: chunk %d's stream [%d, %d) of %d bytes", ErrCorrupt, c, lo, hi, h.CodesLen)
		}
		fi.ChunkStreamMin = min(fi.ChunkStreamMin, hi-lo)
		fi.ChunkStreamMax = max(fi.ChunkStreamMax, hi-lo)
	}
	if lay.Chunks == 0 {
		fi.ChunkStreamMin = 0
	}
	return nil
}
