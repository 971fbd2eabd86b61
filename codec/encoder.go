package codec

import (
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
)

// Encoder writes SplitZip frames. It is reusable: tables built for a codebook and scratch buffers are kept
// between calls, so encoding allocates nothing once warm (given a dst with enough capacity). An Encoder is not
// safe for concurrent use; use one per goroutine.
type Encoder struct {
	o      encoderOptions
	tables []*encTable // most recently used first; a few, so alternating codebooks (K, V) don't rebuild
	parts  []encPart
	jobs   []job
	wg     sync.WaitGroup
	hist   Histogram
}

// encTable is what an encoder derives from one codebook.
type encTable struct {
	cb   Codebook
	code [256]int16 // exponent → code, -1 when the exponent escapes
	// pair is the bf16 4-bit fast path's table: index e0 | e1<<8 (two exponents) → the code byte
	// c0 | c1<<4 in bits 0–7, bit 8 set when e0 escapes, bit 9 when e1 does.
	pair *[1 << 16]uint16
}

// encPart is one goroutine's share of an encode: a contiguous range of chunks.
type encPart struct {
	wg       *sync.WaitGroup
	run_     func(p *encPart)
	src      []byte
	frame    []byte
	lay      Layout
	tab      *encTable
	dt       DType
	n        int
	c0, c1   int
	esc      []byte // this part's escapes, 3 bytes each, in chunk order
	budget   int    // stop collecting escapes past this many: the frame will fall back to raw anyway
	overflow bool
}

func (p *encPart) run() { p.run_(p); p.wg.Done() }

// NewEncoder returns an encoder configured by opts.
func NewEncoder(opts ...EOption) (*Encoder, error) {
	e := &Encoder{
		o: encoderOptions{concurrency: defaultConcurrency(), codebooks: map[DType]*Codebook{}},
	}
	for _, opt := range opts {
		if err := opt(&e.o); err != nil {
			return nil, err
		}
	}
	e.parts = make([]encPart, e.o.concurrency)
	e.jobs = make([]job, e.o.concurrency)
	for i := range e.parts {
		e.parts[i].wg = &e.wg
		e.jobs[i] = &e.parts[i]
	}
	return e, nil
}

// Codebook returns the codebook the encoder uses for dt when not adaptive: the one given with WithCodebook, or
// the built-in default.
func (e *Encoder) Codebook(dt DType) (*Codebook, error) {
	if cb, ok := e.o.codebooks[dt]; ok {
		return cb, nil
	}
	return DefaultCodebook(dt)
}

// Encode appends one frame holding src, a little-endian tensor of dtype dt, to dst and returns the extended
// slice. It needs at most MaxEncodedLen(len(src)) bytes of spare capacity in dst to avoid allocating.
func (e *Encoder) Encode(dst, src []byte, dt DType) ([]byte, error) {
	cb, err := e.codebookFor(src, dt)
	if err != nil {
		return dst, err
	}
	return e.encode(dst, src, dt, cb)
}

// EncodeWith is Encode with an explicit codebook for this one frame (per layer, K vs V, …).
func (e *Encoder) EncodeWith(dst, src []byte, cb *Codebook) ([]byte, error) {
	if err := cb.validate(); err != nil {
		return dst, err
	}
	return e.encode(dst, src, cb.DType, cb)
}

func (e *Encoder) codebookFor(src []byte, dt DType) (*Codebook, error) {
	if !dt.Valid() {
		return nil, fmt.Errorf("%w: %d", ErrDType, uint8(dt))
	}
	if !dt.Coded() {
		return nil, nil
	}
	if !e.o.adaptive {
		return e.Codebook(dt)
	}
	e.hist = Histogram{DType: dt}
	if err := e.hist.Add(src); err != nil {
		return nil, err
	}
	if e.hist.Total == 0 {
		return DefaultCodebook(dt)
	}
	bits := DefaultBits
	if base, err := e.Codebook(dt); err == nil {
		bits = int(base.Bits)
	}
	return e.hist.Codebook(bits)
}

func checkSize(src []byte, dt DType) (n int, err error) {
	if !dt.Valid() {
		return 0, fmt.Errorf("%w: %d", ErrDType, uint8(dt))
	}
	size := dt.Size()
	if len(src)%size != 0 {
		return 0, fmt.Errorf("%w: %d bytes is not a whole number of %d-byte %s elements", ErrSize, len(src), size, dt)
	}
	n = len(src) / size
	if uint64(n) > maxElements {
		return 0, fmt.Errorf("%w: %d elements, a v1 frame holds at most %d; split the tensor", ErrSize, n, uint64(maxElements))
	}
	return n, nil
}

func (e *Encoder) encode(dst, src []byte, dt DType, cb *Codebook) ([]byte, error) {
	n, err := checkSize(src, dt)
	if err != nil {
		return dst, err
	}
	start := len(dst)
	maxLen := MaxEncodedLen(len(src))
	dst = slices.Grow(dst, maxLen)[:start+maxLen]
	frame := dst[start:]
	if cb == nil {
		return dst[:start+writeRaw(frame, src, dt, n)], nil
	}
	if cb.DType != dt {
		return dst[:start], fmt.Errorf("%w: codebook is for %s, data is %s", ErrCodebook, cb.DType, dt)
	}
	tab := e.table(cb)
	rb := uint8(dt.ResidualBits())
	lay := codedLayout(uint64(n), 0, cb.Bits, rb, DefaultChunk)
	if lay.Escapes > uint64(maxLen) {
		return dst[:start+writeRaw(frame, src, dt, n)], nil
	}
	budget := (maxLen - int(lay.Escapes)) / escapeSize

	parts := 1
	if len(src) >= parallelMin {
		parts = min(e.o.concurrency, int(lay.Chunks))
	}
	kernel := encodeGeneric
	if dt == BF16 && cb.Bits == 4 {
		kernel = encodeBF16Nibbles
	}
	for i := range parts {
		p := &e.parts[i]
		p.run_, p.src, p.frame, p.lay, p.tab, p.dt, p.n = kernel, src, frame, lay, tab, dt, n
		p.c0, p.c1 = int(lay.Chunks)*i/parts, int(lay.Chunks)*(i+1)/parts
		p.esc, p.budget, p.overflow = p.esc[:0], budget, false
	}
	runParts(&e.wg, e.jobs[:parts])

	total := 0
	for i := range parts {
		p := &e.parts[i]
		total += len(p.esc) / escapeSize
		if p.overflow || total > budget {
			return dst[:start+writeRaw(frame, src, dt, n)], nil
		}
	}
	lay = codedLayout(uint64(n), uint64(total), cb.Bits, rb, DefaultChunk)

	// Codebook, the table (the parts left per-chunk counts in it), gaps, escapes, header.
	clear(frame[HeaderSize:lay.Table])
	copy(frame[lay.Codebook:], cb.Exponents)
	table := frame[lay.Table : lay.Table+4*lay.Chunks]
	var sum uint32
	for c := 0; c < len(table); c += 4 {
		cnt := binary.LittleEndian.Uint32(table[c:])
		binary.LittleEndian.PutUint32(table[c:], sum)
		sum += cnt
	}
	codesEnd := lay.Codes + (uint64(n)*uint64(cb.Bits)+7)/8
	resEnd := lay.Residuals + (uint64(n)*uint64(rb)+7)/8
	clear(frame[lay.Table+4*lay.Chunks : lay.Codes])
	clear(frame[codesEnd:lay.Residuals])
	clear(frame[resEnd:lay.Escapes])
	off := lay.Escapes
	for i := range parts {
		off += uint64(copy(frame[off:], e.parts[i].esc))
	}
	h := Header{
		DType: dt, CodeBits: cb.Bits, Elements: uint64(n), Escapes: uint64(total), ChunkLog2: DefaultChunk,
		ResidualBits: rb, CodebookLen: uint16(len(cb.Exponents)), PayloadLen: lay.End - HeaderSize,
		CodesLen: codesEnd - lay.Codes, ResidualsLen: resEnd - lay.Residuals,
	}
	h.marshal(frame)
	return dst[:start+int(lay.End)], nil
}

// PutRawHeader writes into dst[:HeaderSize] the header of a raw frame holding rawLen bytes of dtype dt; the
// caller places the payload right after it. It is for assembling raw frames from scattered memory (a GPU path
// copies blocks straight into place); Encode writes raw frames by itself.
func PutRawHeader(dst []byte, dt DType, rawLen int) error {
	if !dt.Valid() {
		return fmt.Errorf("%w: %d", ErrDType, uint8(dt))
	}
	if rawLen < 0 || rawLen%dt.Size() != 0 || uint64(rawLen/dt.Size()) > maxElements {
		return fmt.Errorf("%w: %d bytes of %s", ErrSize, rawLen, dt)
	}
	if len(dst) < HeaderSize {
		return fmt.Errorf("%w: %d bytes for a %d-byte header", ErrShortBuffer, len(dst), HeaderSize)
	}
	h := Header{DType: dt, Raw: true, Elements: uint64(rawLen / dt.Size()), PayloadLen: uint64(rawLen), ResidualsLen: uint64(rawLen)}
	h.marshal(dst)
	return nil
}

// writeRaw writes a raw frame of src into frame and returns its length.
func writeRaw(frame, src []byte, dt DType, n int) int {
	h := Header{DType: dt, Raw: true, Elements: uint64(n), PayloadLen: uint64(len(src)), ResidualsLen: uint64(len(src))}
	h.marshal(frame)
	return HeaderSize + copy(frame[HeaderSize:], src)
}

// maxTables bounds the table cache: the bf16 table is 128 KiB.
const maxTables = 4

// table returns the encoder's tables for cb, building them for a codebook it has not seen recently.
func (e *Encoder) table(cb *Codebook) *encTable {
	for i, t := range e.tables {
		if t.cb.Equal(cb) {
			copy(e.tables[1:i+1], e.tables[:i])
			e.tables[0] = t
			return t
		}
	}
	t := &encTable{cb: Codebook{DType: cb.DType, Bits: cb.Bits, Exponents: slices.Clone(cb.Exponents)}}
	for i := range t.code {
		t.code[i] = -1
	}
	for k, x := range cb.Exponents {
		if t.code[x] < 0 {
			t.code[x] = int16(k)
		}
	}
	if cb.DType == BF16 && cb.Bits == 4 {
		t.pair = new([1 << 16]uint16)
		for i := range t.pair {
			c0, c1 := t.code[i&0xFF], t.code[i>>8]
			var v uint16
			if c0 < 0 {
				v |= 0x100
			} else {
				v |= uint16(c0)
			}
			if c1 < 0 {
				v |= 0x200
			} else {
				v |= uint16(c1) << 4
			}
			t.pair[i] = v
		}
	}
	if len(e.tables) < maxTables {
		e.tables = append(e.tables, nil)
	}
	copy(e.tables[1:], e.tables)
	e.tables[0] = t
	return t
}

// chunkBounds returns the element range of chunk c.
func chunkBounds(c, n int) (i0, i1 int) {
	i0 = c << DefaultChunk
	return i0, min(i0+1<<DefaultChunk, n)
}

// addEscape records element i (chunk-local position pos) with exponent x; false once over budget.
func (p *encPart) addEscape(pos int, x uint8) bool {
	if len(p.esc) >= p.budget*escapeSize {
		p.overflow = true
		return false
	}
	p.esc = append(p.esc, byte(pos), byte(pos>>8), x)
	return true
}

// setChunkCount stores chunk c's escape count in the table slot; Encode turns counts into offsets.
func (p *encPart) setChunkCount(c, count int) {
	binary.LittleEndian.PutUint32(p.frame[p.lay.Table+4*uint64(c):], uint32(count))
}
