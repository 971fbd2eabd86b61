package codec

import (
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
)

// Decoder reads SplitZip frames. It is reusable and allocates nothing once warm (given a dst with enough
// capacity). It is not safe for concurrent use; use one per goroutine.
//
// A Decoder reads frames of both versions: raw, fast-mode and entropy frames, with or without a payload
// checksum. It trusts nothing in a frame: every length, count, offset, table and stream is checked before it
// is used, and a frame that fails a check returns an error wrapping ErrCorrupt, ErrTruncated, ErrBadMagic,
// ErrVersion, ErrHeaderCRC or ErrChecksum (a frame with a checksum is verified before anything else is read).
type Decoder struct {
	o     decoderOptions
	tab   decTable
	h     Header // the frame being decoded; parts point at it
	parts []decPart
	jobs  []job
	wg    sync.WaitGroup
	segs  segments // DecodeSegments' output
	// Entropy frames (decoder_entropy.go).
	ent     []*entDecPart
	entJobs []job
	entDec  entDec
	lengths [257]uint8
	crc     crcRunner
}

// decTable is what a decoder derives from a frame's codebook.
type decTable struct {
	exp   [256]uint8  // code → exponent
	pairs [256]uint32 // bf16 4-bit path: a code byte → both elements' exponent fields, in place
	// halves is the same path's table for the assembly kernel (decodeBF16AVX2): the high byte of each code's
	// exponent field (exp>>1), then the low byte ((exp&1)<<7). Built once a frame, not once a segment.
	halves [32]byte
}

// fillBF16Nibbles derives the bf16 4-bit path's tables (pairs, halves) from exp.
func (t *decTable) fillBF16Nibbles() {
	for b := range t.pairs {
		t.pairs[b] = uint32(t.exp[b&0xF])<<7 | uint32(t.exp[b>>4])<<23
	}
	for k := range 16 {
		x := t.exp[k]
		t.halves[k], t.halves[16+k] = x>>1, x<<7
	}
}

type decPart struct {
	wg      *sync.WaitGroup
	run_    func(p *decPart)
	frame   []byte
	out     []byte // the output from element o0 on: all of it, or one chunk of a segmented output
	o0      int
	pf      uintptr                     // on scattered segments, what to prefetch at the span's start, or 0
	segs    *segments                   // a segmented output (DecodeSegments), else nil
	scratch []byte                      // a chunk of a segmented output that spans segments
	span    func(p *decPart, i, i1 int) // the kernel on part of a chunk (bf16 4-bit), else nil
	pieces  bool                        // the chunk being patched lies in several segments, written in place
	k       int                         // segment hint while pieces
	lay     Layout
	h       *Header
	tab     *decTable
	n       int
	c0, c1  int
	err     error
}

func (p *decPart) run() {
	if p.segs != nil {
		p.err = p.runSegmented()
	} else {
		p.run_(p)
		p.err = p.patchEscapes()
	}
	p.wg.Done()
}

// runSegmented decodes chunk by chunk, each chunk in place when one segment holds it, else into the part's
// scratch (a few KiB, in L1) and from there into the segments.
func (p *decPart) runSegmented() error {
	size := p.h.DType.Size()
	c0, c1 := p.c0, p.c1
	k, ka := -1, -1 // no hint: find searches
	defer func() { p.pieces, p.pf = false, 0 }()
	for c := c0; c < c1; c++ {
		i0, i1 := chunkBounds(c, p.n, p.h.ChunkLog2)
		if b0, b1 := i0*size, i1*size; p.span != nil && p.segs.aligned(b0, b1, k, spanAlign*size) {
			// Segment boundaries on kernel steps: each piece is decoded where it lies, in stretches over which
			// the bytes prefetchAhead further on lie in one segment.
			p.c0, p.c1, p.k = c, c+1, k
			k, ka, _ = p.segs.stretches(b0, b1, k, ka, size, func(piece []byte, b, q, r int, pf uintptr) bool {
				p.out, p.o0, p.pf = piece, b/size, pf
				p.span(p, q/size, r/size)
				return true
			})
			p.pieces = true
			if err := p.patchEscapes(); err != nil {
				return err
			}
			p.pieces = false
			continue
		}
		if need := (1 << p.h.ChunkLog2) * size; cap(p.scratch) < need { // a chunk of the frame's size
			p.scratch = make([]byte, need)
		}
		out, inPlace, k2 := p.segs.view(p.scratch, i0*size, i1*size, k)
		p.out, p.o0, p.c0, p.c1 = out, i0, c, c+1
		p.run_(p)
		if err := p.patchEscapes(); err != nil {
			return err
		}
		if !inPlace {
			k2 = p.segs.scatter(out, i0*size, k2)
		}
		k = k2
	}
	return nil
}

// NewDecoder returns a decoder configured by opts.
func NewDecoder(opts ...DOption) (*Decoder, error) {
	d := &Decoder{o: decoderOptions{concurrency: defaultConcurrency()}}
	for _, opt := range opts {
		if err := opt(&d.o); err != nil {
			return nil, err
		}
	}
	d.parts = make([]decPart, d.o.concurrency)
	d.jobs = make([]job, d.o.concurrency)
	for i := range d.parts {
		d.parts[i].wg = &d.wg
		d.jobs[i] = &d.parts[i]
	}
	return d, nil
}

// Decode appends the tensor held by frame to dst and returns the extended slice. frame must be exactly one
// frame (see SplitFrame for a buffer of several). On error dst is returned unextended.
func (d *Decoder) Decode(dst, frame []byte) ([]byte, Header, error) {
	h, err := checkFrame(frame)
	if err != nil {
		return dst, h, err
	}
	start := len(dst)
	dst = slices.Grow(dst, int(h.RawLen()))[:start+int(h.RawLen())]
	if err := d.decode(dst[start:], frame, &h); err != nil {
		return dst[:start], h, err
	}
	return dst, h, nil
}

// DecodeInto decodes frame into out, which must be exactly the decoded size (Header.RawLen): the path for
// writing straight into a tensor's memory.
func (d *Decoder) DecodeInto(out, frame []byte) (Header, error) {
	h, err := checkFrame(frame)
	if err != nil {
		return h, err
	}
	if uint64(len(out)) != h.RawLen() {
		return h, fmt.Errorf("%w: frame holds %d bytes (%d %s), destination is %d", ErrShortBuffer, h.RawLen(), h.Elements, h.DType, len(out))
	}
	return h, d.decode(out, frame, &h)
}

// DecodeSegments is DecodeInto a tensor held in pieces: it writes the frame's contents across segs, in order,
// whose lengths must add up to the decoded size and hold whole elements each (a paged KV cache's blocks,
// written where they lie).
func (d *Decoder) DecodeSegments(segs [][]byte, frame []byte) (Header, error) {
	h, err := checkFrame(frame)
	if err != nil {
		return h, err
	}
	if err := d.segs.set(segs, h.DType); err != nil {
		return h, err
	}
	defer d.segs.reset()
	if uint64(d.segs.len()) != h.RawLen() {
		return h, fmt.Errorf("%w: frame holds %d bytes (%d %s), the segments %d", ErrShortBuffer, h.RawLen(), h.Elements, h.DType, d.segs.len())
	}
	return h, d.decodeTo(nil, &d.segs, frame, &h)
}

// checkFrame parses the header and checks that frame is exactly one frame long.
func checkFrame(frame []byte) (Header, error) {
	h, err := ParseHeader(frame)
	if err != nil {
		return h, err
	}
	if uint64(len(frame)) < h.FrameLen() {
		return h, fmt.Errorf("%w: have %d bytes, the frame is %d", ErrTruncated, len(frame), h.FrameLen())
	}
	if uint64(len(frame)) > h.FrameLen() {
		return h, fmt.Errorf("%w: %d bytes after the end of a %d-byte frame", ErrCorrupt, uint64(len(frame))-h.FrameLen(), h.FrameLen())
	}
	return h, nil
}

// SplitFrame returns the first frame of b and what follows it, checking only the header.
func SplitFrame(b []byte) (frame, rest []byte, err error) {
	h, err := ParseHeader(b)
	if err != nil {
		return nil, b, err
	}
	if uint64(len(b)) < h.FrameLen() {
		return nil, b, fmt.Errorf("%w: have %d bytes, the frame is %d", ErrTruncated, len(b), h.FrameLen())
	}
	return b[:h.FrameLen()], b[h.FrameLen():], nil
}

func (d *Decoder) decode(out, frame []byte, hdr *Header) error {
	return d.decodeTo(out, nil, frame, hdr)
}

// decodeTo decodes frame into out, or into segs when not nil.
func (d *Decoder) decodeTo(out []byte, segs *segments, frame []byte, hdr *Header) error {
	d.h = *hdr
	h := &d.h
	outLen := len(out)
	if segs != nil {
		outLen = segs.len()
	}
	if err := d.verifyChecksum(frame, h); err != nil {
		return err
	}
	if h.Entropy {
		return d.decodeEntropy(out, segs, frame, h)
	}
	if h.Raw {
		if segs != nil {
			segs.copyFrom(frame[HeaderSize:])
		} else {
			copy(out, frame[HeaderSize:])
		}
		return nil
	}
	lay := h.Layout()
	limit := uint8(1<<h.DType.ExponentBits() - 1)
	for k, x := range frame[lay.Codebook : lay.Codebook+uint64(h.CodebookLen)] {
		if x > limit {
			return fmt.Errorf("%w: codebook entry %d is exponent %d, beyond %s's %d", ErrCorrupt, k, x, h.DType, limit)
		}
		d.tab.exp[k] = x
	}
	kernel, span := decodeGeneric, (func(*decPart, int, int))(nil)
	if h.DType == BF16 && h.CodeBits == 4 {
		kernel, span = decodeBF16Nibbles, decodeBF16Span
		d.tab.fillBF16Nibbles()
	}
	parts := 1
	if outLen >= parallelMin {
		parts = min(d.o.concurrency, int(lay.Chunks))
	}
	if lay.Chunks == 0 {
		return nil
	}
	for i := range parts {
		p := &d.parts[i]
		p.run_, p.span, p.frame, p.out, p.o0, p.pf, p.segs, p.lay, p.h, p.tab, p.n = kernel, span, frame, out, 0, 0, segs, lay, h, &d.tab, int(h.Elements)
		p.c0, p.c1 = int(lay.Chunks)*i/parts, int(lay.Chunks)*(i+1)/parts
		p.err = nil
	}
	runParts(&d.wg, d.jobs[:parts])
	for i := range parts {
		if err := d.parts[i].err; err != nil {
			return err
		}
	}
	return nil
}

// elem returns the output from element i on.
func (p *decPart) elem(i, size int) []byte {
	if p.pieces {
		p.k = p.segs.find(i*size, p.k)
		return p.segs.segs[p.k][i*size-p.segs.off[p.k]:]
	}
	return p.out[(i-p.o0)*size:]
}

// patchEscapes checks the chunk table and the escapes of chunks [c0, c1) and writes the escaped exponents.
func (p *decPart) patchEscapes() error {
	g := geometry(p.h.DType)
	table := p.frame[p.lay.Table:]
	esc := p.frame[p.lay.Escapes:]
	total := p.h.Escapes
	limit := g.expMask
	for c := p.c0; c < p.c1; c++ {
		lo := uint64(binary.LittleEndian.Uint32(table[4*c:]))
		hi := total
		if c+1 < int(p.lay.Chunks) {
			hi = uint64(binary.LittleEndian.Uint32(table[4*c+4:]))
		}
		if c == 0 && lo != 0 {
			return fmt.Errorf("%w: chunk table starts at %d, not 0", ErrCorrupt, lo)
		}
		if lo > hi || hi > total {
			return fmt.Errorf("%w: chunk %d escapes [%d, %d) out of order or beyond the %d escapes", ErrCorrupt, c, lo, hi, total)
		}
		i0, i1 := chunkBounds(c, p.n, p.h.ChunkLog2)
		prev := -1
		for k := lo; k < hi; k++ {
			e := esc[escapeSize*k : escapeSize*k+escapeSize]
			pos := int(binary.LittleEndian.Uint16(e))
			x := uint64(e[2])
			if pos <= prev || i0+pos >= i1 {
				return fmt.Errorf("%w: escape %d of chunk %d at position %d (previous %d, chunk has %d elements)", ErrCorrupt, k, c, pos, prev, i1-i0)
			}
			if x > limit {
				return fmt.Errorf("%w: escape %d has exponent %d, beyond %s's %d", ErrCorrupt, k, x, p.h.DType, limit)
			}
			prev = pos
			o := p.elem(i0+pos, g.size)
			v := loadElem(o, g.size)
			storeElem(o, g.size, v&^(g.expMask<<g.expShift)|x<<g.expShift)
		}
	}
	return nil
}
