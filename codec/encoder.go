package codec

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"slices"
	"sync"

	"github.com/splitzip/splitzip/internal/crc32c"
)

// Encoder writes SplitZip frames, in fast mode (the default: 4-bit codes, version 1 frames) or high-ratio mode
// (WithMode(ModeHighRatio): Huffman-coded exponents, version 2 frames). It is reusable: tables built for a
// codebook or code table and scratch buffers are kept between calls, so encoding allocates nothing once warm
// (given a dst with enough capacity). An Encoder is not safe for concurrent use; use one per goroutine.
type Encoder struct {
	o      encoderOptions
	tables []*encTable // most recently used first; a few, so alternating codebooks (K, V) don't rebuild
	parts  []encPart
	jobs   []job
	wg     sync.WaitGroup
	hist   Histogram
	segs   segments // EncodeSegments' input
	// High-ratio mode (encoder_entropy.go).
	ent       []*entPart
	entJobs   []job
	entTables []*entEnc // most recently used first
	builder   tableBuilder
	ownTable  CodeTable // the table built from the frame being encoded
	crc       crcRunner
}

// encTable is what an encoder derives from one codebook.
type encTable struct {
	cb   Codebook
	code [256]int16 // exponent → code, -1 when the exponent escapes
	// pair is the bf16 4-bit fast path's table: index e0 | e1<<8 (two exponents) → the code byte
	// c0 | c1<<4 in bits 0–7, bit 8 set when e0 escapes, bit 9 when e1 does.
	pair *[1 << 16]uint16
	lut  encLUT // the same for the AVX2 kernel (bf16_amd64.s)
}

// encPart is one goroutine's share of an encode: a contiguous range of chunks.
type encPart struct {
	wg       *sync.WaitGroup
	run_     func(p *encPart)
	src      []byte // the input from element s0 on: all of it, or one chunk of a segmented input
	s0       int
	pf       uintptr                              // on scattered segments, what to prefetch at the span's start, or 0
	segs     *segments                            // a segmented input (EncodeSegments), else nil
	scratch  []byte                               // a chunk of a segmented input that spans segments
	span     func(p *encPart, i0, i, i1 int) bool // the kernel on part of a chunk (bf16 4-bit), else nil
	frame    []byte
	lay      Layout
	tab      *encTable
	dt       DType
	n        int
	c0, c1   int // the chunks the kernel works on: the part's, or one of them at a time
	first    int // the part's chunks: [first, last)
	last     int
	esc      []byte // this part's escapes, 3 bytes each, in chunk order
	budget   int    // stop collecting escapes past this many: the frame will fall back to raw anyway
	overflow bool
	crc      bool   // checksum the part's codes and residuals as each chunk is done (EncodeSegmentsCRC only)
	crcCodes uint32 // CRC-32C of the part's codes bytes so far
	crcRes   uint32 // and of its residual bytes
}

func (p *encPart) run() {
	if p.segs != nil {
		p.runSegmented()
	} else {
		p.run_(p)
	}
	p.wg.Done()
}

// codeBytes and resBytes are the byte ranges of chunk c's codes and residuals in the frame (chunks hold a
// multiple of 8 elements, so they start on whole bytes).
func (p *encPart) codeBytes(c int) (lo, hi uint64) {
	i0, i1 := chunkBounds(c, p.n, DefaultChunk)
	bits := uint64(p.tab.cb.Bits)
	return p.lay.Codes + uint64(i0)*bits/8, p.lay.Codes + (uint64(i1)*bits+7)/8
}

func (p *encPart) resBytes(c int) (lo, hi uint64) {
	i0, i1 := chunkBounds(c, p.n, DefaultChunk)
	bits := uint64(p.dt.ResidualBits())
	return p.lay.Residuals + uint64(i0)*bits/8, p.lay.Residuals + (uint64(i1)*bits+7)/8
}

// chunkCRC adds chunk c's codes and residuals, just written, to the part's checksums.
func (p *encPart) chunkCRC(c int) {
	if !p.crc || p.overflow {
		return
	}
	lo, hi := p.codeBytes(c)
	p.crcCodes = crc32.Update(p.crcCodes, castagnoli, p.frame[lo:hi])
	lo, hi = p.resBytes(c)
	p.crcRes = crc32.Update(p.crcRes, castagnoli, p.frame[lo:hi])
}

// runSegmented runs the kernel chunk by chunk, each chunk read in place when one segment holds it, else
// gathered into the part's scratch (a few KiB, so it stays in L1 for the kernel).
func (p *encPart) runSegmented() {
	size := p.dt.Size()
	c0, c1 := p.c0, p.c1
	k, ka := -1, -1 // no hint: find searches
	defer func() { p.pf = 0 }()
	for c := c0; c < c1; c++ {
		i0, i1 := chunkBounds(c, p.n, DefaultChunk)
		if b0, b1 := i0*size, i1*size; p.span != nil && p.segs.aligned(b0, b1, k, spanAlign*size) {
			// Segment boundaries on kernel steps: each piece is encoded where it lies, in stretches over which
			// the bytes prefetchAhead further on lie in one segment.
			before := len(p.esc)
			var done bool
			k, ka, done = p.segs.stretches(b0, b1, k, ka, size, func(piece []byte, b, q, r int, pf uintptr) bool {
				p.src, p.s0, p.pf = piece, b/size, pf
				return p.span(p, i0, q/size, r/size)
			})
			if !done {
				return
			}
			p.setChunkCount(c, (len(p.esc)-before)/escapeSize)
			p.chunkCRC(c)
			continue
		}
		if need := (1 << DefaultChunk) * size; cap(p.scratch) < need {
			p.scratch = make([]byte, need)
		}
		p.src, k = p.segs.gather(p.scratch, i0*size, i1*size, k)
		p.s0, p.c0, p.c1 = i0, c, c+1
		p.run_(p)
		if p.overflow {
			return
		}
		p.chunkCRC(c)
	}
}

// NewEncoder returns an encoder configured by opts.
func NewEncoder(opts ...EOption) (*Encoder, error) {
	e := &Encoder{
		o: encoderOptions{concurrency: defaultConcurrency(), codebooks: map[DType]*Codebook{}, tables: map[DType]*CodeTable{}},
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
	if e.o.mode == ModeHighRatio {
		frame, _, err := e.encodeEntropy(dst, src, nil, dt, e.o.tables[dt], false)
		return frame, err
	}
	cb, err := e.codebookFor([][]byte{src}, dt)
	if err != nil {
		return dst, err
	}
	frame, _, err := e.encode(dst, src, nil, dt, cb, false)
	return frame, err
}

// Mode is the encoder's mode (WithMode).
func (e *Encoder) Mode() Mode { return e.o.mode }

// CodeTable returns the table given with WithCodeTable for dt, or nil: high-ratio frames of dt then get a
// table built from their own exponents.
func (e *Encoder) CodeTable(dt DType) *CodeTable { return e.o.tables[dt] }

// EncodeWithTable is Encode in high-ratio mode with an explicit code table for this one frame (learned from
// earlier frames, per layer, K vs V, …), whatever the encoder's mode. The table must code every exponent
// (CodeTable.CodesAll).
func (e *Encoder) EncodeWithTable(dst, src []byte, t *CodeTable) ([]byte, error) {
	if err := checkEncodingTable(t); err != nil {
		return dst, err
	}
	frame, _, err := e.encodeEntropy(dst, src, nil, t.DType, t, false)
	return frame, err
}

// EncodeSegmentsWithTable is EncodeWithTable of the concatenation of segs, read where they lie (see
// EncodeSegments): a paged cache's blocks coded with a table learned from earlier frames, with no gathered copy.
func (e *Encoder) EncodeSegmentsWithTable(dst []byte, segs [][]byte, t *CodeTable) ([]byte, error) {
	frame, _, err := e.encodeSegmentsWithTable(dst, segs, t, false)
	return frame, err
}

// EncodeSegmentsWithTableCRC is EncodeSegmentsWithTable that also returns the frame's CRC-32C, computed as the
// frame is written (see EncodeSegmentsCRC).
func (e *Encoder) EncodeSegmentsWithTableCRC(dst []byte, segs [][]byte, t *CodeTable) ([]byte, uint32, error) {
	return e.encodeSegmentsWithTable(dst, segs, t, true)
}

func (e *Encoder) encodeSegmentsWithTable(dst []byte, segs [][]byte, t *CodeTable, withCRC bool) ([]byte, uint32, error) {
	if err := checkEncodingTable(t); err != nil {
		return dst, 0, err
	}
	if err := e.segs.set(segs, t.DType); err != nil {
		return dst, 0, err
	}
	defer e.segs.reset()
	return e.encodeEntropy(dst, nil, &e.segs, t.DType, t, withCRC)
}

// checkEncodingTable validates a table given to an encoder: it must code every exponent of its dtype.
func checkEncodingTable(t *CodeTable) error {
	if err := t.Validate(); err != nil {
		return err
	}
	if !t.CodesAll() {
		return fmt.Errorf("%w: %s code table leaves exponents without a code and gives ESC none", ErrCodebook, t.DType)
	}
	return nil
}

// EncodeSegments is Encode of the concatenation of segs, read where they lie: the frame of a tensor held in
// pieces (a paged KV cache's blocks) without gathering it into one buffer first. Every segment must hold whole
// elements. The frame is byte for byte the one Encode writes for the concatenation.
func (e *Encoder) EncodeSegments(dst []byte, segs [][]byte, dt DType) ([]byte, error) {
	frame, _, err := e.encodeSegments(dst, segs, dt, false)
	return frame, err
}

// EncodeSegmentsCRC is EncodeSegments that also returns the frame's CRC-32C (Castagnoli), computed as the
// frame is written rather than by reading it again: crc32.Checksum(frame[len(dst):], Castagnoli table).
func (e *Encoder) EncodeSegmentsCRC(dst []byte, segs [][]byte, dt DType) ([]byte, uint32, error) {
	return e.encodeSegments(dst, segs, dt, true)
}

func (e *Encoder) encodeSegments(dst []byte, segs [][]byte, dt DType, withCRC bool) ([]byte, uint32, error) {
	if err := e.segs.set(segs, dt); err != nil {
		return dst, 0, err
	}
	defer e.segs.reset()
	if e.o.mode == ModeHighRatio {
		return e.encodeEntropy(dst, nil, &e.segs, dt, e.o.tables[dt], withCRC)
	}
	cb, err := e.codebookFor(segs, dt)
	if err != nil {
		return dst, 0, err
	}
	return e.encode(dst, nil, &e.segs, dt, cb, withCRC)
}

// EncodeWith is Encode in fast mode with an explicit codebook for this one frame (per layer, K vs V, …),
// whatever the encoder's mode.
func (e *Encoder) EncodeWith(dst, src []byte, cb *Codebook) ([]byte, error) {
	if err := cb.validate(); err != nil {
		return dst, err
	}
	frame, _, err := e.encode(dst, src, nil, cb.DType, cb, false)
	return frame, err
}

// EncodeSegmentsWithCRC is EncodeWith of the concatenation of segs, read where they lie (see EncodeSegments),
// that also returns the frame's CRC-32C as EncodeSegmentsCRC does: a paged cache's blocks coded with a codebook
// learned from earlier frames (per layer, …), with no gathered copy, whatever the encoder's mode.
func (e *Encoder) EncodeSegmentsWithCRC(dst []byte, segs [][]byte, cb *Codebook) ([]byte, uint32, error) {
	if err := cb.validate(); err != nil {
		return dst, 0, err
	}
	if err := e.segs.set(segs, cb.DType); err != nil {
		return dst, 0, err
	}
	defer e.segs.reset()
	return e.encode(dst, nil, &e.segs, cb.DType, cb, true)
}

func (e *Encoder) codebookFor(src [][]byte, dt DType) (*Codebook, error) {
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
	for _, s := range src {
		if err := e.hist.Add(s); err != nil {
			return nil, err
		}
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

func checkSize(srcLen int, dt DType) (n int, err error) {
	if !dt.Valid() {
		return 0, fmt.Errorf("%w: %d", ErrDType, uint8(dt))
	}
	size := dt.Size()
	if srcLen%size != 0 {
		return 0, fmt.Errorf("%w: %d bytes is not a whole number of %d-byte %s elements", ErrSize, srcLen, size, dt)
	}
	n = srcLen / size
	if uint64(n) > maxElements {
		return 0, fmt.Errorf("%w: %d elements, a v1 frame holds at most %d; split the tensor", ErrSize, n, uint64(maxElements))
	}
	return n, nil
}

// encode writes src, or segs when not nil, as one fast-mode frame, and its CRC-32C when withCRC.
func (e *Encoder) encode(dst, src []byte, segs *segments, dt DType, cb *Codebook, withCRC bool) ([]byte, uint32, error) {
	start := len(dst)
	frame, crc, ok, err := e.encodeFrame(dst, src, segs, dt, cb, withCRC && !e.o.checksum)
	if err != nil {
		return frame, 0, err
	}
	if e.o.checksum { // the v1 frame becomes a v2 frame with the checksum flag
		h, err := ParseHeader(frame[start:])
		if err != nil {
			return dst, 0, fmt.Errorf("splitzip: internal error, encoder wrote a bad header: %w", err)
		}
		return e.seal(frame, start, &h, withCRC)
	}
	if withCRC && !ok {
		crc = e.crc.sum(frame[start:], e.o.concurrency) // a raw frame: checksummed whole
	}
	return frame, crc, nil
}

// encodeFrame is encode; the CRC comes back only for coded frames, where the parts computed it.
func (e *Encoder) encodeFrame(dst, src []byte, segs *segments, dt DType, cb *Codebook, withCRC bool) (_ []byte, crc uint32, ok bool, err error) {
	srcLen := len(src)
	if segs != nil {
		srcLen = segs.len()
	}
	n, err := checkSize(srcLen, dt)
	if err != nil {
		return dst, 0, false, err
	}
	start := len(dst)
	maxLen := MaxEncodedLen(srcLen)
	dst = slices.Grow(dst, maxLen)[:start+maxLen]
	frame := dst[start:]
	writeRaw := func(frame, src []byte, dt DType, n int) int {
		if segs == nil {
			return writeRaw(frame, src, dt, n)
		}
		h := Header{DType: dt, Raw: true, Elements: uint64(n), PayloadLen: uint64(srcLen), ResidualsLen: uint64(srcLen)}
		h.marshal(frame)
		return HeaderSize + segs.copyTo(frame[HeaderSize:])
	}
	if cb == nil {
		return dst[:start+writeRaw(frame, src, dt, n)], 0, false, nil
	}
	if cb.DType != dt {
		return dst[:start], 0, false, fmt.Errorf("%w: codebook is for %s, data is %s", ErrCodebook, cb.DType, dt)
	}
	tab := e.table(cb)
	rb := uint8(dt.ResidualBits())
	lay := codedLayout(uint64(n), 0, cb.Bits, rb, DefaultChunk)
	if lay.Escapes > uint64(maxLen) {
		return dst[:start+writeRaw(frame, src, dt, n)], 0, false, nil
	}
	budget := (maxLen - int(lay.Escapes)) / escapeSize

	parts := 1
	if srcLen >= parallelMin {
		parts = min(e.o.concurrency, int(lay.Chunks))
	}
	kernel, span := encodeGeneric, (func(*encPart, int, int, int) bool)(nil)
	if dt == BF16 && cb.Bits == 4 {
		kernel, span = encodeBF16Nibbles, encodeBF16Span
	}
	for i := range parts {
		p := &e.parts[i]
		p.run_, p.span, p.src, p.s0, p.pf, p.segs, p.frame, p.lay, p.tab, p.dt, p.n = kernel, span, src, 0, 0, segs, frame, lay, tab, dt, n
		p.c0, p.c1 = int(lay.Chunks)*i/parts, int(lay.Chunks)*(i+1)/parts
		p.first, p.last = p.c0, p.c1
		p.esc, p.budget, p.overflow = p.esc[:0], budget, false
		p.crc, p.crcCodes, p.crcRes = withCRC, 0, 0
	}
	runParts(&e.wg, e.jobs[:parts])

	total := 0
	for i := range parts {
		p := &e.parts[i]
		total += len(p.esc) / escapeSize
		if p.overflow || total > budget {
			return dst[:start+writeRaw(frame, src, dt, n)], 0, false, nil
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
	dst = dst[:start+int(lay.End)]
	if !withCRC {
		return dst, 0, false, nil
	}
	// The frame's bytes in order: header to codes, each part's codes, the gap, each part's residuals, the
	// gap and the escapes.
	crc = crc32.Checksum(frame[:lay.Codes], castagnoli)
	for i := range parts {
		p := &e.parts[i]
		lo, _ := p.codeBytes(p.first)
		_, hi := p.codeBytes(p.last - 1)
		crc = crc32c.Combine(crc, p.crcCodes, hi-lo)
	}
	crc = crc32.Update(crc, castagnoli, frame[codesEnd:lay.Residuals])
	for i := range parts {
		p := &e.parts[i]
		lo, _ := p.resBytes(p.first)
		_, hi := p.resBytes(p.last - 1)
		crc = crc32c.Combine(crc, p.crcRes, hi-lo)
	}
	crc = crc32.Update(crc, castagnoli, frame[resEnd:lay.End])
	return dst, crc, true, nil
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
		t.lut.build(cb.Exponents)
	}
	if len(e.tables) < maxTables {
		e.tables = append(e.tables, nil)
	}
	copy(e.tables[1:], e.tables)
	e.tables[0] = t
	return t
}

// chunkBounds returns the element range of chunk c of n elements in chunks of 2^log2 (the encoder's are
// DefaultChunk; a decoder takes the frame's).
func chunkBounds(c, n int, log2 uint8) (i0, i1 int) {
	i0 = c << log2
	return i0, min(i0+1<<log2, n)
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
