package codec

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
	"slices"
	"sync"

	"github.com/splitzip/splitzip/internal/crc32c"
)

// The high-ratio encoder: entropy frames (FORMAT.md "Entropy mode"). A frame is written in up to two passes
// over the input: the exponent histogram (skipped when the encoder has a table for the dtype; a sample of a
// large input, see sampleStride), then per chunk
// of 8,192 elements, the exponents and residuals split off into L1-sized scratch, the residuals written in
// place, and the exponents coded in 32 lanes. Goroutines take contiguous runs of chunks; the first writes its
// streams straight into the frame, the others into buffers of their own that are copied behind it.

// entPart is one goroutine's share of an entropy encode: a histogram, or a contiguous range of chunks.
type entPart struct {
	wg      *sync.WaitGroup
	hist    bool // count exponents of elements [i0, i1) instead of encoding
	sample  bool // count only the sampled runs (sampleRun of every sampleStride(n) elements) of [i0, i1)
	src     []byte
	segs    *segments
	dt      DType
	n       int
	i0, i1  int // histogram range
	counts  [256]uint64
	c8      counts8 // bf16 counting tables
	pending int     // bytes counted into c8 since its last flush
	c0, c1  int     // chunks to encode
	frame   []byte
	lay     Layout
	enc     *entEnc
	own     bool   // streams go into buf, not the frame
	out     []byte // where the streams go
	buf     []byte
	tmp     []byte // one chunk's streams when out may be too short for them
	used    int    // bytes of streams written to out
	over    bool   // out is full: the frame will be raw
	esc     uint64
	crc     bool   // checksum the part's residuals and streams as each chunk is done (see payloadCRC)
	crcRes  uint32 // CRC-32C of the part's residual bytes so far
	crcOut  uint32 // and of its streams
	lane    *laneEnc
	gather  []byte // a chunk of a segmented input that spans segments off residual bytes (split)
}

func (p *entPart) run() {
	if p.hist {
		p.histogram()
	} else {
		p.encode()
	}
	p.wg.Done()
}

// chunkBytes returns the bytes of elements [i0, i1): in place, or gathered from segments.
func (p *entPart) chunkBytes(i0, i1 int) []byte {
	size := p.dt.Size()
	if p.segs == nil {
		return p.src[i0*size : i1*size]
	}
	if cap(p.gather) < maxEntropyChunk*size {
		p.gather = make([]byte, maxEntropyChunk*size)
	}
	b, _ := p.segs.gather(p.gather, i0*size, i1*size, -1)
	return b
}

// A frame's own code table comes from a sample of a large input: the first sampleRun elements of every
// sampleStride(n), an eighth of the exponents up to 8 Mi elements and at most sampleCap of them above, which
// takes the histogram from about a third of the own-table encode's time to a few percent. On real KV that costs
// under 0.1 % of ratio (0.03 % on the evaluation fixture tiled to 64 MiB); exponents the sample missed still
// encode, through ESC. Runs of 4 KiB of bf16 keep the reads sequential within a page: runs of 256 elements, each
// a cold cache line and TLB miss, cost a third of a full pass. When the frame's streams come out more than
// sampleSlack above what the sample predicts (an input whose sample misleads), the encoder counts every
// exponent and encodes again. The runs are at fixed element offsets, so the table depends on the input alone,
// not on how many goroutines count it.
const (
	sampleRun   = 2048
	sampleEvery = 16384   // the stride between runs, doubled for inputs over sampleCap × 8
	sampleCap   = 1 << 20 // the most elements a sample counts: a million exponents fix the table
	sampleMin   = 1 << 16 // smaller inputs are counted whole
)

// sampleStride is the distance between the sampled runs of an input of n elements: sampleEvery, doubled until
// the sample counts at most sampleCap elements. On one core a 64 MiB input's histogram took 6 % of its
// own-table encode with an eighth counted, 1–2 % with a thirty-second.
func sampleStride(n int) int {
	every := sampleEvery
	for n/every*sampleRun > sampleCap {
		every *= 2
	}
	return every
}

// sampleSlack bounds by how much a frame's code streams may exceed the sampled table's prediction (a
// fraction, plus lane padding per chunk) before the encoder retries with an exact histogram.
const sampleSlack = 1.0 / 32

func (p *entPart) histogram() {
	clear(p.counts[:])
	if !p.sample {
		p.count(p.i0, p.i1)
	} else {
		every := sampleStride(p.n)
		for s := p.i0 / every * every; s < p.i1; s += every {
			if i0, i1 := max(s, p.i0), min(s+sampleRun, p.i1); i0 < i1 {
				p.count(i0, i1)
			}
		}
	}
	if p.dt == BF16 {
		p.c8.flush(&p.counts)
		p.pending = 0
	}
}

// count adds the exponents of elements [i0, i1) to the part's counts (bf16: to its eight tables, which
// histogram flushes).
func (p *entPart) count(i0, i1 int) {
	size := p.dt.Size()
	k := -1
	for b, b1 := i0*size, i1*size; b < b1; {
		var piece []byte
		if p.segs != nil {
			piece, k = p.segs.piece(b, b1, k)
		} else {
			piece = p.src[b:b1]
		}
		if p.dt != BF16 {
			countExponents(piece, p.dt, &p.counts)
		} else {
			// Flushed well before a 32-bit count can overflow.
			if p.pending += len(piece); p.pending >= 1<<30 {
				p.c8.flush(&p.counts)
				p.pending = len(piece)
			}
			countBF16(piece, &p.c8)
		}
		b += len(piece)
	}
}

// countExponents adds the exponents of the whole elements in b to counts.
func countExponents(b []byte, dt DType, counts *[256]uint64) {
	countSegments([][]byte{b}, dt, counts)
}

// countSegments adds the exponents of the whole elements of every segment to counts, with one set of count
// tables for them all: clearing and folding the tables (24 KiB of memory traffic) costs about what counting a
// paged cache's block of a few KiB does, so a block at a time counted at half the speed.
func countSegments(segs [][]byte, dt DType, counts *[256]uint64) {
	g := geometry(dt)
	if dt != BF16 && g.size != 1 {
		for _, b := range segs {
			for i := 0; i+g.size <= len(b); i += g.size {
				counts[loadElem(b[i:], g.size)>>g.expShift&g.expMask]++
			}
		}
		return
	}
	var tables counts8 // 8 KiB, on the stack
	c := &tables
	flush := func() {
		if dt == BF16 {
			c.flush(counts)
		} else { // fp8: the bytes were counted; fold them by exponent
			c.flushBy(counts, g.expShift, g.expMask)
		}
	}
	const flushEvery = 1 << 20 // bytes: far below where a table's uint32 could overflow
	pending := 0
	for _, b := range segs {
		for len(b) > 0 {
			k := min(len(b), flushEvery-pending) // even: segments hold whole bf16 elements
			if dt == BF16 {
				countBF16(b[:k], c)
			} else {
				countBytes(b[:k], c)
			}
			b, pending = b[k:], pending+k
			if pending == flushEvery {
				flush()
				pending = 0
			}
		}
	}
	if pending > 0 {
		flush()
	}
}

// countBytes counts the byte values of b into c, eight bytes a step over the eight tables.
func countBytes(b []byte, c *counts8) {
	i := 0
	for ; i+8 <= len(b); i += 8 {
		x := binary.LittleEndian.Uint64(b[i:])
		c[0][uint8(x)]++
		c[1][uint8(x>>8)]++
		c[2][uint8(x>>16)]++
		c[3][uint8(x>>24)]++
		c[4][uint8(x>>32)]++
		c[5][uint8(x>>40)]++
		c[6][uint8(x>>48)]++
		c[7][uint8(x>>56)]++
	}
	for ; i < len(b); i++ {
		c[0][b[i]]++
	}
}

// counts8 is eight count tables, so that equal neighbouring exponents (common: a few exponents dominate) do
// not wait on each other's increments.
type counts8 [8][256]uint32

func (c *counts8) flush(counts *[256]uint64) { c.flushBy(counts, 0, 0xFF) }

// flushBy adds the tables' counts to counts, value x's at x>>shift&mask, and clears the tables.
func (c *counts8) flushBy(counts *[256]uint64, shift uint, mask uint64) {
	for x := range counts {
		var s uint64
		for t := range c {
			s += uint64(c[t][x])
		}
		counts[uint64(x)>>shift&mask] += s
	}
	*c = counts8{}
}

func countBF16(b []byte, c *counts8) {
	i := 0
	for ; i+16 <= len(b); i += 16 {
		x := binary.LittleEndian.Uint64(b[i:])
		y := binary.LittleEndian.Uint64(b[i+8:])
		c[0][uint8(x>>7)]++
		c[1][uint8(x>>23)]++
		c[2][uint8(x>>39)]++
		c[3][uint8(x>>55)]++
		c[4][uint8(y>>7)]++
		c[5][uint8(y>>23)]++
		c[6][uint8(y>>39)]++
		c[7][uint8(y>>55)]++
	}
	for ; i+2 <= len(b); i += 2 {
		c[0][uint8(binary.LittleEndian.Uint16(b[i:])>>7)]++
	}
}

func (p *entPart) encode() {
	if p.lane == nil {
		p.lane = new(laneEnc)
	}
	p.used, p.over, p.esc = 0, false, 0
	p.crcRes, p.crcOut = 0, 0
	// The lane encoder keeps no pointer into the caller's buffers past the call.
	defer func() { p.lane.next, p.lane.nextRes = nil, nil }()
	if p.own {
		p.out = p.buf[:cap(p.buf)]
	}
	for c := p.c0; c < p.c1; c++ {
		i0, i1 := chunkBounds(c, p.n, EntropyChunk)
		m := i1 - i0
		p.split(i0, i1)
		p.lane.next, p.lane.nextRes = p.nextChunk(i1)
		need := int(maxChunkBytes(uint64(m)))
		var words, esc int
		switch {
		case p.used+need <= len(p.out):
			words, esc = p.lane.encodeLanes(m, p.enc, p.out[p.used:])
		case p.own: // grow the part's own buffer
			p.buf = slices.Grow(p.buf[:p.used], need)
			p.out = p.buf[:cap(p.buf)]
			words, esc = p.lane.encodeLanes(m, p.enc, p.out[p.used:])
		default: // the frame's tail may be too short: code into tmp and copy if it fits
			if len(p.tmp) < need {
				p.tmp = make([]byte, maxChunkBytes(maxEntropyChunk))
			}
			words, esc = p.lane.encodeLanes(m, p.enc, p.tmp)
			if p.used+words > len(p.out) {
				p.over = true
				return
			}
			copy(p.out[p.used:], p.tmp[:words])
		}
		binary.LittleEndian.PutUint32(p.frame[p.lay.Table+4*uint64(c):], uint32(words))
		if p.crc {
			// Both are in L1 now: split wrote the residuals, the lane encoder the streams.
			lo, hi := p.resBytes(i0, i1)
			p.crcRes = crc32.Update(p.crcRes, castagnoli, p.frame[lo:hi])
			p.crcOut = crc32.Update(p.crcOut, castagnoli, p.out[p.used:p.used+words])
		}
		p.used += words
		p.esc += uint64(esc)
	}
}

// resBytes is where the residuals of elements [i0, i1) lie in the frame (chunks start on whole bytes).
func (p *entPart) resBytes(i0, i1 int) (lo, hi uint64) {
	rb := uint64(p.dt.ResidualBits())
	return p.lay.Residuals + uint64(i0)*rb/8, p.lay.Residuals + (uint64(i1)*rb+7)/8
}

// nextChunk returns where the chunk from element i starts in the input and in the frame's residuals (bf16
// only), or nil: the AVX2 lane encoder prefetches both while it codes the chunk before, so that the next split
// reads and writes cache instead of waiting on memory. On one Zen 3 core that took the high-ratio encode of
// 64 MiB from 1.9 to 2.2 GB/s.
func (p *entPart) nextChunk(i int) (src, res *byte) {
	if i >= p.n {
		return nil, nil
	}
	size := p.dt.Size()
	if p.segs == nil {
		src = &p.src[i*size]
	} else {
		src = p.segs.start(i*size, min(p.n, i+maxEntropyChunk)*size)
	}
	if p.dt == BF16 {
		res = &p.frame[p.lay.Residuals+uint64(i)]
	}
	return src, res
}

// split splits chunk elements [i0, i1) into the part's exponents and the frame's residuals: a segmented
// input piece by piece where it lies (a paged cache's blocks), so that it is read once; only a chunk whose
// pieces would start off a residual byte goes through the gather buffer.
func (p *entPart) split(i0, i1 int) {
	res := p.frame[p.lay.Residuals:]
	exps := p.lane.exps[:i1-i0]
	if p.segs != nil {
		size := p.dt.Size()
		if p.segs.elemPieces(i0, i1, size, geometry(p.dt).resBits, func(piece []byte, e0 int) {
			splitChunk(piece, p.dt, exps[e0-i0:e0-i0+len(piece)/size], res, e0)
		}) {
			return
		}
	}
	splitChunk(p.chunkBytes(i0, i1), p.dt, exps, res, i0)
}

// splitChunk splits the elements of b (the chunk starting at element i0) into their exponents, into exps, and
// their residuals, written into res (the frame's residual section) at element i0.
func splitChunk(b []byte, dt DType, exps []byte, res []byte, i0 int) {
	if dt == BF16 {
		res = res[i0 : i0+len(exps)]
		b = b[:2*len(exps)]
		j := 0
		if n := len(exps) &^ 31; hasEntropyAsm && n > 0 {
			splitBF16AVX512(&b[0], &exps[0], &res[0], n)
			j = n
		} else if hasEntropyAVX2 && n > 0 {
			splitBF16AVX2(&b[0], &exps[0], &res[0], n)
			j = n
		}
		for ; j+8 <= len(exps); j += 8 {
			x0 := binary.LittleEndian.Uint64(b[2*j:])
			x1 := binary.LittleEndian.Uint64(b[2*j+8:])
			binary.LittleEndian.PutUint64(res[j:], packResiduals(x0)|packResiduals(x1)<<32)
			binary.LittleEndian.PutUint64(exps[j:], packLanes((x0>>7)&laneFF)|packLanes((x1>>7)&laneFF)<<32)
		}
		for ; j < len(exps); j++ {
			v := binary.LittleEndian.Uint16(b[2*j:])
			res[j] = uint8(v>>8)&0x80 | uint8(v)&0x7F
			exps[j] = uint8(v >> 7)
		}
		return
	}
	g := geometry(dt)
	j := 0
	if dt == FP8E4M3 || dt == FP8E5M2 {
		j = splitFP8(b, dt, exps, res[i0*int(g.resBits)/8:])
	}
	mant := uint64(1)<<g.expShift - 1
	rw := bitWriter{b: res[uint64(i0+j)*uint64(g.resBits)/8:]}
	for ; j < len(exps); j++ {
		v := loadElem(b[j*g.size:], g.size)
		exps[j] = uint8(v >> g.expShift & g.expMask)
		rw.put(v&mant|(v>>g.signShift)<<g.expShift, g.resBits)
	}
	rw.flush()
}

// splitFP8 is splitChunk for fp8, eight elements (a word) at a time: the exponents are a shift and a mask of
// each byte, and the eight residuals (sign above mantissa: 4 bits for e4m3, 3 for e5m2) pack into 4 or 3 bytes
// of res. It returns how many elements it split (the whole groups of eight); a field-by-field loop ran at a
// tenth of the bf16 path's speed. Where the lane coder's assembly runs, whole steps of 64 go to AVX-512 first.
func splitFP8(b []byte, dt DType, exps, res []byte) int {
	n := len(exps) &^ 7
	j := 0
	if v := len(exps) &^ 63; (hasEntropyAsm || hasEntropyAVX2) && v > 0 {
		_, _ = b[v-1], res[v*int(geometry(dt).resBits)/8-1]
		switch {
		case dt == FP8E4M3 && hasEntropyAsm:
			splitE4M3AVX512(&b[0], &exps[0], &res[0], v)
		case dt == FP8E4M3:
			splitE4M3AVX2(&b[0], &exps[0], &res[0], v)
		case hasEntropyAsm:
			splitE5M2AVX512(&b[0], &exps[0], &res[0], v)
		default:
			splitE5M2AVX2(&b[0], &exps[0], &res[0], v)
		}
		j = v
	}
	if dt == FP8E4M3 { // s eeee mmm: residual s mmm
		for ; j < n; j += 8 {
			x := binary.LittleEndian.Uint64(b[j:])
			binary.LittleEndian.PutUint64(exps[j:], x>>3&0x0F0F0F0F0F0F0F0F)
			r := x>>4&0x0808080808080808 | x&0x0707070707070707
			binary.LittleEndian.PutUint32(res[j/2:], uint32(packLanes((r|r>>4)&laneFF))) // nibble pairs
		}
		return n
	}
	for ; j < n; j += 8 { // s eeeee mm: residual s mm
		x := binary.LittleEndian.Uint64(b[j:])
		binary.LittleEndian.PutUint64(exps[j:], x>>2&0x1F1F1F1F1F1F1F1F)
		r := x>>5&0x0404040404040404 | x&0x0303030303030303
		r = (r | r>>5) & 0x003F003F003F003F // 3-bit fields: pairs, then fours, then all eight
		r = (r | r>>10) & 0x00000FFF00000FFF
		r = (r | r>>20) & 0xFFFFFF
		k := j / 8 * 3
		res[k], res[k+1], res[k+2] = byte(r), byte(r>>8), byte(r>>16)
	}
	return n
}

// packLanes packs the low bytes of four 16-bit lanes into four bytes.
func packLanes(y uint64) uint64 {
	y = (y | y>>8) & half32
	return (y | y>>16) & 0xFFFFFFFF
}

// maxEntTables bounds the entropy table cache.
const maxEntTables = 4

// entTable returns the encoder's coding tables for t, building them for a table not seen recently.
func (e *Encoder) entTable(t *CodeTable) *entEnc {
	for i, x := range e.entTables {
		if x.t.Equal(t) {
			copy(e.entTables[1:i+1], e.entTables[:i])
			e.entTables[0] = x
			return x
		}
	}
	var x *entEnc
	if len(e.entTables) < maxEntTables {
		x = new(entEnc)
		e.entTables = append(e.entTables, nil)
	} else {
		x = e.entTables[len(e.entTables)-1]
	}
	x.build(t)
	copy(e.entTables[1:], e.entTables)
	e.entTables[0] = x
	return x
}

// encodeEntropy writes src (or segs) as one entropy frame with table t (nil: built from the input's own
// histogram), falling back to raw when that is not smaller. It returns the frame and, when withCRC, its
// CRC-32C.
func (e *Encoder) encodeEntropy(dst, src []byte, segs *segments, dt DType, t *CodeTable, withCRC bool) ([]byte, uint32, error) {
	srcLen := len(src)
	if segs != nil {
		srcLen = segs.len()
	}
	n, err := checkSize(srcLen, dt)
	if err != nil {
		return dst, 0, err
	}
	if t != nil && t.DType != dt {
		return dst, 0, fmt.Errorf("%w: code table is for %s, data is %s", ErrCodebook, t.DType, dt)
	}
	start := len(dst)
	maxLen := MaxEncodedLen(srcLen)
	dst = slices.Grow(dst, maxLen)[:start+maxLen]
	frame := dst[start:]
	raw := func() ([]byte, uint32, error) {
		return e.finishRaw(dst, start, src, segs, dt, n, withCRC)
	}
	if !dt.CodedIn(ModeHighRatio) || n == 0 {
		return raw()
	}
	// The smallest possible code table: no room for the sections, or an input too short to gain.
	if entropyLayout(uint64(n), 0, dt, EntropyChunk, codeTableLen(0, 0)).Codes >= uint64(maxLen) {
		return raw()
	}
	chunks := (n + maxEntropyChunk - 1) / maxEntropyChunk
	parts := 1
	if srcLen >= parallelMin {
		parts = min(e.o.concurrency, chunks)
	}
	e.growEnt(parts)
	sampled := t == nil && n >= sampleMin
	var predicted float64 // bytes of code streams the sampled table predicts
	if t == nil {
		var bits uint64
		t, bits = e.frameTable(src, segs, dt, n, parts, sampled)
		if sampled {
			predicted = float64(bits) / 8 * float64(n) / float64(e.ownTable.Samples)
		}
		// Not smaller than raw even before lane padding: raw without coding.
		lo, hi := t.span()
		if !sampled && entropyLayout(uint64(n), 0, dt, EntropyChunk, codeTableLen(lo, hi)).Codes+(bits+7)/8 >= uint64(maxLen) {
			return raw()
		}
	}
	enc := e.entTable(t)
	lo, hi := enc.t.span()
	tableLen := codeTableLen(lo, hi)
	lay := entropyLayout(uint64(n), 0, dt, EntropyChunk, tableLen)
	if lay.Codes >= uint64(maxLen) {
		return raw()
	}
	checksummed := withCRC || e.o.checksum // the parts checksum what they write (payloadCRC)
	for i := range parts {
		p := e.ent[i]
		p.hist, p.src, p.segs, p.dt, p.n = false, src, segs, dt, n
		p.crc = checksummed
		p.c0, p.c1 = chunks*i/parts, chunks*(i+1)/parts
		p.frame, p.lay, p.enc = frame, lay, enc
		p.own = i > 0
		if !p.own {
			p.out = frame[lay.Codes:]
		}
	}
	runParts(&e.wg, e.entJobs[:parts])
	total, esc, over := 0, uint64(0), false
	for i := range parts {
		p := e.ent[i]
		over = over || p.over
		total += p.used
		esc += p.esc
	}
	if sampled && (over || float64(total) > predicted*(1+sampleSlack)+float64(chunks*lanes*4)) {
		// The sample misled: code the frame with the table of all its exponents.
		t, _ = e.frameTable(src, segs, dt, n, parts, false)
		return e.encodeEntropy(dst[:start], src, segs, dt, t, withCRC)
	}
	if over {
		return raw()
	}
	end := lay.Codes + uint64(total)
	if end >= uint64(maxLen) || total > math.MaxUint32 {
		return raw()
	}
	off := lay.Codes + uint64(e.ent[0].used)
	for i := 1; i < parts; i++ {
		off += uint64(copy(frame[off:], e.ent[i].buf[:e.ent[i].used]))
	}
	// Code table, chunk table (the parts left word counts in it), gaps, header.
	putCodeTable(frame[lay.Codebook:lay.Codebook+tableLen], enc.t.Lengths, lo, hi)
	clear(frame[lay.Codebook+tableLen : lay.Table])
	var sum uint32
	table := frame[lay.Table : lay.Table+4*lay.Chunks]
	for c := 0; c < len(table); c += 4 {
		cnt := binary.LittleEndian.Uint32(table[c:])
		binary.LittleEndian.PutUint32(table[c:], sum)
		sum += cnt
	}
	rb := dt.ResidualBits()
	resEnd := lay.Residuals + (uint64(n)*uint64(rb)+7)/8
	clear(frame[lay.Table+4*lay.Chunks : lay.Residuals])
	clear(frame[resEnd:lay.Codes])
	h := Header{
		DType: dt, Entropy: true, CodeBits: uint8(enc.max), Elements: uint64(n), Escapes: esc,
		ChunkLog2: EntropyChunk, ResidualBits: uint8(rb), CodebookLen: uint16(tableLen),
		PayloadLen: end - HeaderSize, CodesLen: uint64(total), ResidualsLen: resEnd - lay.Residuals,
	}
	if !checksummed {
		return e.seal(dst[:start+int(end)], start, &h, false)
	}
	return e.sealPayload(dst[:start+int(end)], start, &h, withCRC, e.payloadCRC(frame, &lay, resEnd, parts))
}

// payloadCRC is the CRC-32C of an entropy frame's payload (all but its header), from the parts' checksums of
// their residuals and streams and the few bytes between: the frame is not read again.
func (e *Encoder) payloadCRC(frame []byte, lay *Layout, resEnd uint64, parts int) uint32 {
	crc := crcOf(frame[HeaderSize:lay.Residuals]) // code table, chunk table, gap
	for i := range parts {
		p := e.ent[i]
		lo, _ := p.resBytes(chunkBounds(p.c0, p.n, EntropyChunk))
		_, hi := p.resBytes(chunkBounds(p.c1-1, p.n, EntropyChunk))
		crc = crc32c.Combine(crc, p.crcRes, hi-lo)
	}
	crc = crc32.Update(crc, castagnoli, frame[resEnd:lay.Codes])
	for i := range parts {
		crc = crc32c.Combine(crc, e.ent[i].crcOut, uint64(e.ent[i].used))
	}
	return crc
}

// frameTable builds the table of a frame's own exponents, counted by parts goroutines (a sample of them when
// sampled), into e.ownTable; it returns the table and the exponent bits its code spends on the counts.
func (e *Encoder) frameTable(src []byte, segs *segments, dt DType, n, parts int, sampled bool) (*CodeTable, uint64) {
	for i := range parts {
		p := e.ent[i]
		p.hist, p.sample, p.src, p.segs, p.dt, p.n = true, sampled, src, segs, dt, n
		p.i0, p.i1 = n*i/parts, n*(i+1)/parts
	}
	runParts(&e.wg, e.entJobs[:parts])
	counts := &e.ent[0].counts
	for i := 1; i < parts; i++ {
		for x, c := range e.ent[i].counts {
			counts[x] += c
		}
	}
	var total uint64
	for _, c := range counts {
		total += c
	}
	eb := dt.ExponentBits()
	e.ownTable.DType, e.ownTable.Samples = dt, total
	e.ownTable.Lengths = slices.Grow(e.ownTable.Lengths[:0], 1<<eb+1)[:1<<eb+1]
	// A sampled table gives ESC a code, for the exponents the sample missed.
	bits, _ := e.builder.build(counts, eb, sampled, e.ownTable.Lengths)
	return &e.ownTable, bits
}

// seal writes the header h of the frame at dst[start:], with the payload checksum when the encoder adds one,
// and returns the frame and, when withCRC, the CRC-32C of the whole frame.
func (e *Encoder) seal(dst []byte, start int, h *Header, withCRC bool) ([]byte, uint32, error) {
	frame := dst[start:]
	if !withCRC && !e.o.checksum {
		h.marshal(frame)
		return dst, 0, nil
	}
	return e.sealPayload(dst, start, h, withCRC, e.crc.sum(frame[HeaderSize:], e.o.concurrency))
}

// sealPayload is seal with the CRC-32C of the frame's payload given.
func (e *Encoder) sealPayload(dst []byte, start int, h *Header, withCRC bool, payload uint32) ([]byte, uint32, error) {
	frame := dst[start:]
	if e.o.checksum {
		h.Checksum, h.PayloadCRC = true, payload
	}
	h.marshal(frame)
	if !withCRC {
		return dst, 0, nil
	}
	return dst, crc32c.Combine(crcOf(frame[:HeaderSize]), payload, uint64(len(frame)-HeaderSize)), nil
}

// finishRaw writes a raw frame of src (or segs) at dst[start:] and seals it.
func (e *Encoder) finishRaw(dst []byte, start int, src []byte, segs *segments, dt DType, n int, withCRC bool) ([]byte, uint32, error) {
	frame := dst[start:]
	size := n * dt.Size()
	if segs != nil {
		segs.copyTo(frame[HeaderSize:])
	} else {
		copy(frame[HeaderSize:], src)
	}
	h := Header{DType: dt, Raw: true, Elements: uint64(n), PayloadLen: uint64(size), ResidualsLen: uint64(size)}
	return e.seal(dst[:start+HeaderSize+size], start, &h, withCRC)
}

// putCodeTable writes the compact code table (FORMAT.md): lo, hi, then 4-bit lengths, low nibble first: ESC's,
// then those of exponents lo..hi.
func putCodeTable(b []byte, lengths []uint8, lo, hi int) {
	clear(b)
	b[0], b[1] = byte(lo), byte(hi)
	put := func(j int, l uint8) { b[2+j/2] |= l << (4 * (j & 1)) }
	put(0, lengths[len(lengths)-1])
	for x := lo; x <= hi; x++ {
		put(1+x-lo, lengths[x])
	}
}

// growEnt makes sure the encoder has k entropy parts.
func (e *Encoder) growEnt(k int) {
	for len(e.ent) < k {
		e.ent = append(e.ent, nil)
	}
	for i := range k {
		if e.ent[i] == nil {
			e.ent[i] = &entPart{wg: &e.wg}
		}
	}
	if len(e.entJobs) < k {
		e.entJobs = make([]job, k)
	}
	for i := range k {
		e.entJobs[i] = e.ent[i]
	}
}
