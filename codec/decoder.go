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
// A Decoder trusts nothing in a frame: every length, count, offset and escape position is checked before it is
// used, and a frame that fails a check returns an error wrapping ErrCorrupt, ErrTruncated, ErrBadMagic,
// ErrVersion or ErrHeaderCRC.
type Decoder struct {
	o     decoderOptions
	tab   decTable
	h     Header // the frame being decoded; parts point at it
	parts []decPart
	jobs  []job
	wg    sync.WaitGroup
}

// decTable is what a decoder derives from a frame's codebook.
type decTable struct {
	exp   [256]uint8  // code → exponent
	pairs [256]uint32 // bf16 4-bit path: a code byte → both elements' exponent fields, in place
}

type decPart struct {
	wg     *sync.WaitGroup
	run_   func(p *decPart)
	frame  []byte
	out    []byte
	lay    Layout
	h      *Header
	tab    *decTable
	n      int
	c0, c1 int
	err    error
}

func (p *decPart) run() {
	p.run_(p)
	p.err = p.patchEscapes()
	p.wg.Done()
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
	d.h = *hdr
	h := &d.h
	if h.Raw {
		copy(out, frame[HeaderSize:])
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
	kernel := decodeGeneric
	if h.DType == BF16 && h.CodeBits == 4 {
		kernel = decodeBF16Nibbles
		for b := range d.tab.pairs {
			d.tab.pairs[b] = uint32(d.tab.exp[b&0xF])<<7 | uint32(d.tab.exp[b>>4])<<23
		}
	}
	parts := 1
	if len(out) >= parallelMin {
		parts = min(d.o.concurrency, int(lay.Chunks))
	}
	if lay.Chunks == 0 {
		return nil
	}
	for i := range parts {
		p := &d.parts[i]
		p.run_, p.frame, p.out, p.lay, p.h, p.tab, p.n = kernel, frame, out, lay, h, &d.tab, int(h.Elements)
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
		i0, i1 := chunkBounds(c, p.n)
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
			o := p.out[(i0+pos)*g.size:]
			v := loadElem(o, g.size)
			storeElem(o, g.size, v&^(g.expMask<<g.expShift)|x<<g.expShift)
		}
	}
	return nil
}
