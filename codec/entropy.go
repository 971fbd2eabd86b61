package codec

import (
	"encoding/binary"
	"math/bits"
	"unsafe"
)

// The entropy mode's exponent streams (FORMAT.md "Entropy mode"): a chunk's exponents are coded in 32
// interleaved lanes (element j of a chunk belongs to lane j mod 32), each lane a MSB-first bit stream cut into
// bytes, and the bytes of all lanes stored in the order a 32-lane decoder takes them: at each step, round 1:
// every lane whose buffer holds fewer than 8 bits takes a byte, lanes in order, then each decodes a code;
// round 2: every lane whose code was ESC and whose buffer holds fewer than eb bits takes a byte, then each
// reads its raw exponent.

const (
	maxEntropyChunk = 1 << EntropyChunk       // elements of an encoder's chunk
	maxSteps        = maxEntropyChunk / lanes // symbols a lane codes in a chunk
	// maxLaneBytes bounds a lane's bytes in the encoder's scratch: at most 2 a symbol (16 bits: ESC and an
	// 8-bit exponent), and room for the final partial word and two zero bytes, or for the assembly's last 8-byte
	// write of a lane's pending words.
	maxLaneBytes = 2*maxSteps + 8
)

// maxChunkBytes bounds the exponent stream of a chunk of m elements: a symbol takes at most 16 bits, and a
// lane of k symbols at most 2k bytes (FORMAT.md).
func maxChunkBytes(m uint64) uint64 { return 2 * m }

// entEnc is what an encoder derives from a code table.
type entEnc struct {
	t   CodeTable // a copy
	eb  int
	max int // longest code (L)
	// lut maps an exponent to its bits (bits 8–23, right-aligned: its code, or ESC's code and the raw
	// exponent when it escapes), bit 7 set when it escapes, and the number of bits in bits 0–4.
	lut [256]uint32
	// simd is lut as the vectorised encoder looks it up.
	simd encTab
	// narrow is lut as 16-entry tables, when every coded exponent lies within 16 of the smallest: then the
	// AVX2 encoder looks a step's 32 exponents up with two byte shuffles instead of four gathers.
	narrow encNarrow
}

// encNarrow is an entEnc's lut for exponents lo … lo+15 as encTab's two byte tables (both 128-bit halves the
// same, for VPSHUFB), and what every other exponent, which escapes, takes: its lens byte, and the low byte of
// its bits without the exponent itself (ESC's code below bit 8, shifted past the raw exponent). ok is false
// when the coded exponents span more than 16, or when some exponent can be neither coded nor escaped.
type encNarrow struct {
	lens, codes [32]uint8
	lo          [32]uint8 // lo in every byte
	escLens     [32]uint8 // an escape's lens byte in every byte
	escLow      [32]uint8 // the low byte of an escape's bits less the exponent, in every byte
	hi          [8]uint32 // encTab.hi in every word
	ok          bool
}

// encTab is an entEnc's lut as two byte tables, which encodeStepsAVX512 looks up 64 exponents at a time: the
// bits an exponent takes with the escape flag (bit 7), and its bit pattern's low byte. Above that byte only
// escapes have bits (ESC's code), the same for every exponent: hi, in place (bits 8–15).
type encTab struct {
	lens  [256]uint8
	codes [256]uint8
	hi    uint32
}

const entEscaped = 1 << 7

func (e *entEnc) build(t *CodeTable) {
	e.t = CodeTable{DType: t.DType, Lengths: append(e.t.Lengths[:0], t.Lengths...), Samples: t.Samples}
	e.eb = t.DType.ExponentBits()
	e.max = t.MaxLen()
	var codes [257]uint16
	canonicalCodes(t.Lengths, codes[:len(t.Lengths)])
	esc := escSymbol(e.eb)
	for x := range e.lut {
		switch {
		case x >= 1<<e.eb:
			e.lut[x] = 0 // not an exponent of this dtype
		case t.Lengths[x] > 0:
			e.lut[x] = uint32(codes[x])<<8 | uint32(t.Lengths[x])
		case t.Lengths[esc] > 0:
			e.lut[x] = (uint32(codes[esc])<<e.eb|uint32(x))<<8 | entEscaped | uint32(int(t.Lengths[esc])+e.eb)
		default:
			e.lut[x] = 0 // no code: an encoder only takes tables that code every exponent
		}
	}
	e.simd = encTab{}
	for x, v := range e.lut {
		e.simd.lens[x] = uint8(v & (31 | entEscaped))
		e.simd.codes[x] = uint8(v >> 8)
		if v&entEscaped != 0 {
			e.simd.hi = v >> 8 & 0xFF00
		}
	}
	e.narrow.build(e)
}

func (n *encNarrow) build(e *entEnc) {
	*n = encNarrow{}
	lo, hi := -1, -1
	for x := range 1 << e.eb {
		switch v := e.lut[x]; {
		case v == 0:
			return // neither coded nor escaped: such a table codes every exponent that occurs, not lo … lo+15
		case v&entEscaped == 0:
			if lo < 0 {
				lo = x
			}
			hi = x
		}
	}
	if lo < 0 || hi-lo >= 16 {
		return
	}
	// Entry i is exponent lo + i as a byte: x = e − lo wraps, so past 255 the entries are those of exponents
	// 0, 1, … (which escape). Entries past 2^eb − 1 of narrower exponents are never looked up.
	for i := range 16 {
		if x := uint8(lo + i); int(x) < 1<<e.eb {
			n.lens[i], n.lens[16+i] = e.simd.lens[x], e.simd.lens[x]
			n.codes[i], n.codes[16+i] = e.simd.codes[x], e.simd.codes[x]
		}
	}
	// An exponent outside lo … lo+15 escapes (if it can occur: below 2^eb); its bits' low byte is ESC's
	// code's low bits above the exponent's eb bits, or the exponent itself.
	var escLens, escLow uint8
	for x := range 1 << e.eb {
		if v := e.lut[x]; v&entEscaped != 0 {
			escLens, escLow = e.simd.lens[x], e.simd.codes[x]&^uint8(1<<e.eb-1)
			break
		}
	}
	for i := range 32 {
		n.lo[i], n.escLens[i], n.escLow[i] = uint8(lo), escLens, escLow
	}
	for i := range n.hi {
		n.hi[i] = e.simd.hi
	}
	n.ok = true
}

// laneEnc is the scratch of the lane coder: a chunk's exponents, each lane's bytes, and which lanes take a
// byte in each round of each step. About 55 KiB; one per encoding goroutine.
type laneEnc struct {
	exps  [maxEntropyChunk]byte
	acc   [lanes]uint64 // each lane's most recent bits (the low ones)
	bits  [lanes]uint32 // bits each lane has coded
	bytes [lanes][maxLaneBytes]byte
	r1    [maxSteps + 1]uint32 // bit l of r1[s]: lane l takes a byte in round 1 of step s
	r2    [maxSteps]uint32     // the same for round 2 (escapes)
	rc    [lanes]uint16
	simd  *encSIMD // the vectorised encoder's scratch, when it runs
	// next and nextRes are the next chunk's input and residuals, which the AVX2 encoder prefetches, a line of
	// input and half a line of residuals a step (nil: nothing to prefetch; entPart.nextChunk).
	next, nextRes *byte
	// bytes is followed by other fields: interleaveAVX512's 4-byte gathers of a lane's last byte stay inside
	// the struct.
}

// encodeLanes codes the chunk's m exponents in e.exps[:m] with enc and writes the chunk's stream to out, which
// must have room for maxChunkBytes(m) bytes. It returns the bytes written and the number of escapes.
func (e *laneEnc) encodeLanes(m int, enc *entEnc, out []byte) (n, escapes int) {
	if hasEntropyAsm || hasEntropyAVX2 {
		return e.encodeLanesSIMD(m, enc, out)
	}
	return e.encodeLanesGo(m, enc, out)
}

// encodeLanesGo is encodeLanes in pure Go: lane by lane, then the bytes interleaved. The reference the
// vectorised encoder is tested against.
func (e *laneEnc) encodeLanesGo(m int, enc *entEnc, out []byte) (n, escapes int) {
	lut := &enc.lut
	steps := (m + lanes - 1) / lanes
	for l := range lanes {
		e.acc[l], e.bits[l] = 0, 0
	}
	esc := 0
	exps := e.exps[:m]
	// Before symbol s a lane's decoder has taken W = ceil((B+8)/8) bytes, B the bits before s (round 1 tops
	// its buffer up to at least 8 bits); after an ESC, at least ceil(B'/8), B' the bits after it (round 2).
	// So a lane takes a byte in round 1 of step s+1 when ceil((B+8)/8) grows over symbol s, which the fast
	// path reads off B's low bits; an escape works out both rounds exactly. Lane by lane, so that a lane's
	// bits stay in registers; the rounds' lane masks are gathered in memory.
	clear(e.r1[:steps+1])
	clear(e.r2[:steps])
	for l := range min(m, lanes) {
		var acc uint64
		var b0 uint32
		out := &e.bytes[l]
		n := (m - l + lanes - 1) / lanes // this lane's symbols
		for s := range n {
			v := lut[exps[s*lanes+l]]
			ln := v & 31
			b1 := b0 + ln
			acc = acc<<ln | uint64(v>>8)
			// The 16-bit word b0 falls in is complete when b1 passes its end; written every time, its last
			// write is the complete word (or the final partial one, below).
			binary.BigEndian.PutUint16(out[2*(b0>>4)&(2*maxSteps-2):], uint16(acc>>(b1&15)))
			next := ((b0+15)&7 + ln) >> 3
			if v&entEscaped != 0 {
				esc++
				w1 := (b0 + 15) >> 3      // bytes after round 1
				w2 := max(w1, (b1+7)>>3)  // after round 2
				e.r2[s] |= (w2 - w1) << l // the ESC's raw exponent needs one more
				next = (b1+15)>>3 - w2    // round 1 of the next step
			}
			e.r1[s+1] |= next << l
			b0 = b1
		}
		e.acc[l], e.bits[l] = acc, b0
	}
	// Each lane's last partial word, then two zero bytes: a lane's decoder may take one byte past its bits.
	for l := range min(m, lanes) {
		b := e.bits[l]
		w := uint16(0)
		if r := b & 15; r != 0 {
			w = uint16(e.acc[l] << (16 - r))
		}
		k := 2 * (b >> 4)
		binary.BigEndian.PutUint16(e.bytes[l][k:], w)
		e.bytes[l][k+2], e.bytes[l][k+3] = 0, 0
	}
	// Round 1 of step 0: every lane with an element; of later steps, only lanes with an element there.
	e.r1[0] = activeLanes(min(m, lanes))
	if rest := m % lanes; rest != 0 && steps > 0 {
		e.r1[steps-1] &= activeLanes(rest)
	}
	return e.interleave(e.r1[:steps], e.r2[:steps], out), esc
}

// interleave writes the lanes' bytes in the order the decoder takes them: at each step, the lanes in r1 (round
// 1), then those in r2 (round 2), each its next byte. It returns the bytes written.
func (e *laneEnc) interleave(r1, r2 []uint32, out []byte) int {
	clear(e.rc[:])
	pos := 0
	for s := range r1 {
		for ld := r1[s]; ld != 0; ld &= ld - 1 {
			l := bits.TrailingZeros32(ld)
			out[pos] = e.bytes[l][e.rc[l]]
			e.rc[l]++
			pos++
		}
		for ld := r2[s]; ld != 0; ld &= ld - 1 {
			l := bits.TrailingZeros32(ld)
			out[pos] = e.bytes[l][e.rc[l]]
			e.rc[l]++
			pos++
		}
	}
	return pos
}

func activeLanes(k int) uint32 { return uint32(uint64(1)<<k - 1) }

// HighRatioAsm names the assembly the high-ratio coder runs on this CPU: "avx512" (the lane coder, split and
// join), "avx2" (the same in AVX2), or "" where it runs in pure Go.
func HighRatioAsm() string {
	switch {
	case hasEntropyAsm:
		return "avx512"
	case hasEntropyAVX2:
		return "avx2"
	}
	return ""
}

// entDec is what a decoder derives from a frame's code table: for every 8-bit prefix of a lane's buffer, the
// symbol it starts with. An entry holds the exponent in bits 0–7 and the code length in bits 8–11; bit 16
// marks ESC (the exponent follows in eb bits), bit 17 a prefix no code starts (a corrupt stream).
type entDec struct {
	eb   int
	tab  [256]uint32
	simd simdTab
}

// simdTab is the same table for the assembly decoders, which read it at these offsets: the exponent of each
// prefix at 0, its code length | ESC<<4 | no-code<<5 at 256, eb at 512 (decodeLanesAVX512); the two as one
// word, exponent | length-and-flags<<8, at 520 (decodeLanesAVX2, which gathers words).
type simdTab struct {
	sym [256]byte
	lf  [256]byte
	eb  uint64
	ent [256]uint32
}

const (
	entDecESC     = 1 << 16
	entDecInvalid = 1 << 17
)

// build fills the table from validated code lengths (2^eb + 1 of them, ESC last).
func (d *entDec) build(lengths []uint8, eb int) {
	d.eb = eb
	for i := range d.tab {
		d.tab[i] = entDecInvalid
	}
	var codes [257]uint16
	canonicalCodes(lengths, codes[:len(lengths)])
	esc := escSymbol(eb)
	for s, l := range lengths {
		if l == 0 {
			continue
		}
		v := uint32(l) << 8
		if s == esc {
			v |= entDecESC
		} else {
			v |= uint32(s)
		}
		// The code, MSB-first, is the top l bits of the 8-bit prefix: every prefix that starts with it.
		lo := int(codes[s]) << (MaxCodeLen - int(l))
		for i := lo; i < lo+1<<(MaxCodeLen-int(l)); i++ {
			d.tab[i] = v
		}
	}
	for i, v := range d.tab {
		d.simd.sym[i] = uint8(v)
		d.simd.lf[i] = uint8(v>>8&15) | uint8(v>>16&1)<<4 | uint8(v>>17&1)<<5
		d.simd.ent[i] = uint32(d.simd.sym[i]) | uint32(d.simd.lf[i])<<8
	}
	d.simd.eb = uint64(eb)
}

// laneDec is the lane decoder's state for one chunk.
type laneDec struct {
	buf   [lanes]uint64 // each lane's unread bits, MSB-aligned; the bits below them are zero
	avail [lanes]int64  // how many there are
	kind  [lanes]uint8  // the flags (bits 16–23) of each lane's last table entry
	// out and res are where the chunk's elements go and its residuals lie, which the AVX2 decoder prefetches
	// for the join that follows it, a line of output and half a line of residuals a step (nil: nothing).
	out, res *byte
	st       [2 * lanes]uint16 // the lanes' state as the assembly keeps it (decodeLanesAVX512, decodeLanesAVX2)
	// tail holds a stream's last bytes with room after them, so that the assembly, which starts a step only
	// with asmReach bytes left to read, decodes the last steps too.
	tail [2 * asmReach]byte
	exps [maxChunk]byte
}

// asmReach is how far past its position a step of the assembly decoders may read: 32 bytes in each round.
const asmReach = 64

// errStream describes a damaged chunk stream.
type errStream struct {
	what string
	lane int
	step int
}

// decodeLanes decodes a chunk of m exponents from its stream into ld.exps[:m]. It checks that the stream holds
// exactly the bytes the decoder takes and that every lane's padding bits are zero.
func (ld *laneDec) decodeLanes(dec *entDec, stream []byte, m int) (escapes int, bad *errStream) {
	nb := len(stream)
	for l := range lanes {
		ld.buf[l], ld.avail[l] = 0, 0
	}
	tab := &dec.tab
	eb := int64(dec.eb)
	pos := 0
	full := m / lanes
	exps := ld.exps[:m]
	s := 0
	if (hasEntropyAsm || hasEntropyAVX2) && full > 0 {
		clear(ld.st[:])
		if nb >= asmReach {
			s, pos, escapes = ld.decodeAsm(stream, full, dec, exps)
		}
		if s < full && nb-pos < asmReach {
			// The last steps run on a copy of the stream's rest in a longer buffer. A valid stream never
			// takes a byte past its end; a stream that did is damaged, and the checked path below reports
			// it from the state before.
			before := ld.st
			k := copy(ld.tail[:], stream[pos:])
			done, p, esc := ld.decodeAsm(ld.tail[:k+asmReach], full-s, dec, exps[s*lanes:])
			if p <= k {
				s, pos, escapes = s+done, pos+p, escapes+esc
			} else {
				ld.st = before
			}
		}
		for l := range lanes {
			ld.buf[l], ld.avail[l] = uint64(ld.st[l])<<48, int64(ld.st[lanes+l])
		}
	}
	// Fast steps: all 32 lanes, and the stream holds any bytes round 1 may take. No branch in the lane loop,
	// and few live values (the compiler keeps them in registers): a cursor into the stream, the entries'
	// flags gathered and looked at once a step.
	for ; s < full && pos+lanes <= nb; s++ {
		xs := (*[lanes]byte)(exps[s*lanes:])
		p0 := unsafe.Pointer(&stream[pos])
		p := p0
		var flags uint32
		for l := 0; l < lanes; l++ {
			b, a := ld.buf[l], ld.avail[l]
			need := (a - 8) >> 63 // -1: the lane takes a byte
			b |= uint64(*(*byte)(p)) << (uint(56-a) & 63) & uint64(need)
			p = unsafe.Add(p, -need)
			v := tab[b>>56]
			flags |= v
			ln := v >> 8 & 15
			xs[l] = uint8(v)
			ld.kind[l] = uint8(v >> 16)
			ld.buf[l] = b << ln
			ld.avail[l] = a + 8&need - int64(ln)
		}
		pos += int(uintptr(p) - uintptr(p0))
		if flags >= entDecESC {
			if flags&entDecInvalid != 0 {
				return 0, ld.invalid(tab, xs[:], s)
			}
			var escs uint32
			for l, k := range ld.kind {
				escs |= uint32(k&1) << l
			}
			var bad *errStream
			if pos, bad = ld.round2(escs, xs[:], stream, pos, eb, s); bad != nil {
				return 0, bad
			}
			escapes += bits.OnesCount32(escs)
		}
	}
	// The rest, with every byte read checked.
	steps := (m + lanes - 1) / lanes
	for ; s < steps; s++ {
		active := min(lanes, m-s*lanes)
		xs := exps[s*lanes : s*lanes+active]
		var escs uint32
		for l := range xs {
			b, a := ld.buf[l], ld.avail[l]
			if a < 8 {
				if pos >= nb {
					return 0, &errStream{"stream ends before its symbols", l, s}
				}
				b |= uint64(stream[pos]) << uint(56-a)
				pos++
				a += 8
			}
			v := tab[b>>56]
			if v >= entDecESC {
				if v&entDecInvalid != 0 {
					return 0, &errStream{"no code starts with these bits", l, s}
				}
				escs |= 1 << l
			}
			ln := v >> 8 & 15
			xs[l] = uint8(v)
			ld.buf[l], ld.avail[l] = b<<ln, a-int64(ln)
		}
		if escs != 0 {
			var bad *errStream
			if pos, bad = ld.round2(escs, xs, stream, pos, eb, s); bad != nil {
				return 0, bad
			}
			escapes += bits.OnesCount32(escs)
		}
	}
	if pos != nb {
		return 0, &errStream{"stream holds bytes after its symbols", -1, steps}
	}
	for l := range min(m, lanes) {
		if ld.buf[l] != 0 {
			return 0, &errStream{"nonzero padding bits", l, steps}
		}
	}
	return escapes, nil
}

// decodeAsm runs the assembly decoder on up to steps whole steps of stream (at least asmReach bytes), from
// and into the state in ld.st, writing exps.
func (ld *laneDec) decodeAsm(stream []byte, steps int, dec *entDec, exps []byte) (done, pos, escapes int) {
	if hasEntropyAsm {
		return decodeLanesAVX512(&stream[0], len(stream), steps, &dec.simd, &ld.st, &exps[0])
	}
	return decodeLanesAVX2(&stream[0], len(stream), steps, &dec.simd, &ld.st, &exps[0],
		orElse(ld.out, &exps[0]), orElse(ld.res, &exps[0]))
}

// invalid reports the first lane of step s whose buffer starts with bits no code starts with (its entry has
// length 0, so its buffer was left as it was).
func (ld *laneDec) invalid(tab *[256]uint32, xs []byte, s int) *errStream {
	for l := range xs {
		if tab[ld.buf[l]>>56]&entDecInvalid != 0 {
			return &errStream{"no code starts with these bits", l, s}
		}
	}
	return &errStream{"no code starts with these bits", -1, s}
}

// round2 reads the raw exponents of the lanes in escs (round 2 of step s), taking bytes from stream at pos.
func (ld *laneDec) round2(escs uint32, xs, stream []byte, pos int, eb int64, s int) (int, *errStream) {
	for ; escs != 0; escs &= escs - 1 {
		l := bits.TrailingZeros32(escs)
		b, a := ld.buf[l], ld.avail[l]
		if a < eb {
			if pos >= len(stream) {
				return pos, &errStream{"stream ends before an escaped exponent", l, s}
			}
			b |= uint64(stream[pos]) << uint(56-a)
			pos++
			a += 8
		}
		xs[l] = uint8(b >> (64 - eb))
		ld.buf[l], ld.avail[l] = b<<uint(eb), a-eb
	}
	return pos, nil
}

// encSIMD is the scratch of the vectorised lane encoder, in the layout encodeStepsAVX512 and encodeStepsAVX2
// read and write: each lane's bit count and newest bits, then per step which lanes take a byte in round 1 (r1)
// and round 2 (r2).
type encSIMD struct {
	b   [lanes]uint32
	acc [lanes]uint32
	r1  [maxSteps + 1]uint32
	r2  [maxSteps]uint32
	// out takes interleaveAVX2's stream, whose 8-byte stores reach up to 8 bytes past its end.
	out [maxEntropyChunk*2 + 8]byte
	// ev lists encodeStepsAVX2's completed words (at most one a lane a step; its 32-byte stores and the
	// padding of an odd count reach up to 8 past the last).
	ev [maxEntropyChunk + 8]uint32
}

// useNarrowLookups lets the AVX2 encoder take encNarrow's shuffles where a table allows them; a variable, so
// that tests run the gathers on the same tables.
var useNarrowLookups = true

// encodeLanesSIMD is encodeLanes vectorised: the first phase element by element over a step's 32 lanes
// (encodeStepsAVX512, or encodeStepsAVX2 without AVX-512; a short last step here), each lane's completed words
// written into its bytes as they complete; the second phase (interleaveAVX512 or interleaveAVX2) takes the
// lanes' bytes as the decoder does. The same bytes as encodeLanesGo.
func (e *laneEnc) encodeLanesSIMD(m int, enc *entEnc, out []byte) (n, escapes int) {
	v := e.simd
	if v == nil {
		v = new(encSIMD)
		e.simd = v
	}
	steps := (m + lanes - 1) / lanes
	full := m / lanes
	clear(v.b[:])
	clear(v.acc[:])
	clear(v.r1[:steps+1])
	esc := 0
	if full > 0 && hasEntropyAsm {
		esc = encodeStepsAVX512(&e.exps[0], full, &enc.simd, v, &e.bytes[0][0], maxLaneBytes)
	} else if full > 0 && enc.narrow.ok && useNarrowLookups {
		esc = encodeStepsNarrowAVX2(&e.exps[0], full, &enc.narrow, v, &e.bytes[0][0], &v.ev[0],
			orElse(e.next, &e.exps[0]), orElse(e.nextRes, &e.exps[0]), &out[0])
	} else if full > 0 {
		esc = encodeStepsAVX2(&e.exps[0], full, &enc.lut, v, &e.bytes[0][0], &v.ev[0],
			orElse(e.next, &e.exps[0]), orElse(e.nextRes, &e.exps[0]), &out[0])
	}
	if rest := m - full*lanes; rest > 0 {
		s := full
		v.r2[s] = 0
		for l := range rest {
			x := enc.lut[e.exps[s*lanes+l]]
			ln := x & 31
			b0 := v.b[l]
			b1 := b0 + ln
			acc := v.acc[l]<<ln | x>>8
			if (b0&15+ln)>>4 != 0 {
				binary.BigEndian.PutUint16(e.bytes[l][2*(b0>>4):], uint16(acc>>(b1&15)))
			}
			w1 := (b0 + 15) >> 3
			w2 := max(w1, (b1+7)>>3)
			v.r2[s] |= (w2 - w1) << l
			v.r1[s+1] |= ((b1+15)>>3 - w2) << l
			esc += int(x >> 7 & 1)
			v.b[l], v.acc[l] = b1, acc
		}
	}
	v.r1[0] = activeLanes(min(m, lanes))
	if rest := m % lanes; rest != 0 {
		v.r1[steps-1] &= activeLanes(rest)
	}
	// Each lane's last partial word and two zero bytes.
	for l := range min(m, lanes) {
		w := uint16(0)
		if r := v.b[l] & 15; r != 0 {
			w = uint16(v.acc[l] << (16 - r))
		}
		k := 2 * (v.b[l] >> 4)
		binary.BigEndian.PutUint16(e.bytes[l][k:], w)
		e.bytes[l][k+2], e.bytes[l][k+3] = 0, 0
	}
	if !hasEntropyAsm {
		n = interleaveAVX2(&e.bytes[0][0], &v.r1[0], &v.r2[0], steps, &v.out[0])
		return copy(out, v.out[:n]), esc
	}
	_ = out[maxChunkBytes(uint64(m))-1]
	n = interleaveAVX512(&e.bytes[0][0], maxLaneBytes, &v.r1[0], &v.r2[0], steps, &out[0])
	return n, esc
}

// orElse returns p, or q when p is nil: the assembly prefetches whatever it is given, so nothing to prefetch is
// given as memory that is in cache anyway.
func orElse(p, q *byte) *byte {
	if p != nil {
		return p
	}
	return q
}
