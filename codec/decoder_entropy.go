package codec

import (
	"encoding/binary"
	"fmt"
	"sync"
)

// The high-ratio decoder: entropy frames. The code table and chunk table are checked once; goroutines take
// contiguous runs of chunks, decode each chunk's exponents from its lanes into L1-sized scratch, and join them
// with the residuals into the output (or a segment's scratch, scattered after).

// maxChunk is the largest chunk a frame may use (2^16 elements).
const maxChunk = 1 << maxChunkLog2

type entDecPart struct {
	wg      *sync.WaitGroup
	frame   []byte
	lay     Layout
	h       *Header
	dec     *entDec
	out     []byte
	segs    *segments
	scratch []byte
	n       int
	c0, c1  int
	lane    *laneDec
	esc     uint64
	err     error
}

func (p *entDecPart) run() {
	p.err = p.decode()
	p.wg.Done()
}

func (p *entDecPart) decode() error {
	if p.lane == nil {
		p.lane = new(laneDec)
	}
	p.esc = 0
	// The lane decoder keeps no pointer into the caller's buffers past the call.
	defer func() { p.lane.out, p.lane.res = nil, nil }()
	table := p.frame[p.lay.Table:]
	streams := p.frame[p.lay.Codes:p.lay.End]
	res := p.frame[p.lay.Residuals:]
	dt := p.h.DType
	size := dt.Size()
	for c := p.c0; c < p.c1; c++ {
		lo := uint64(binary.LittleEndian.Uint32(table[4*c:]))
		hi := p.h.CodesLen
		if c+1 < int(p.lay.Chunks) {
			hi = uint64(binary.LittleEndian.Uint32(table[4*c+4:]))
		}
		i0, i1 := chunkBounds(c, p.n, p.h.ChunkLog2)
		m := i1 - i0
		p.lane.out, p.lane.res = nil, nil
		if dt == BF16 { // the join's memory, for the decoder to prefetch
			p.lane.res = &res[i0]
			if p.segs == nil {
				p.lane.out = &p.out[i0*size]
			} else {
				p.lane.out = p.segs.start(i0*size, i1*size)
			}
		}
		esc, bad := p.lane.decodeLanes(p.dec, streams[lo:hi], m)
		if bad != nil {
			if bad.lane < 0 {
				return corrupt("chunk %d: %s (%d bytes)", c, bad.what, hi-lo)
			}
			return corrupt("chunk %d, lane %d, step %d: %s", c, bad.lane, bad.step, bad.what)
		}
		p.esc += uint64(esc)
		if p.segs == nil {
			joinChunk(p.out[i0*size:i1*size], p.lane.exps[:m], res, i0, dt)
			continue
		}
		// Into the segments piece by piece where they lie, else through scratch (see entPart.split).
		exps := p.lane.exps[:m]
		if p.segs.elemPieces(i0, i1, size, geometry(dt).resBits, func(piece []byte, e0 int) {
			joinChunk(piece, exps[e0-i0:e0-i0+len(piece)/size], res, e0, dt)
		}) {
			continue
		}
		if cap(p.scratch) < maxChunk*size {
			p.scratch = make([]byte, maxChunk*size)
		}
		out, inPlace, k := p.segs.view(p.scratch, i0*size, i1*size, -1)
		joinChunk(out, p.lane.exps[:m], res, i0, dt)
		if !inPlace {
			p.segs.scatter(out, i0*size, k)
		}
	}
	return nil
}

// joinChunk writes the elements of the chunk starting at element i0 into out: exponents from exps, residuals
// from res (the frame's residual section).
func joinChunk(out, exps, res []byte, i0 int, dt DType) {
	if dt == BF16 {
		res = res[i0 : i0+len(exps)]
		out = out[:2*len(exps)]
		j := 0
		if n := len(exps) &^ 31; hasEntropyAsm && n > 0 {
			joinBF16AVX512(&exps[0], &res[0], &out[0], n)
			j = n
		} else if hasEntropyAVX2 && n > 0 {
			joinBF16AVX2(&exps[0], &res[0], &out[0], n)
			j = n
		}
		for ; j+8 <= len(exps); j += 8 {
			e := binary.LittleEndian.Uint64(exps[j:])
			r := binary.LittleEndian.Uint64(res[j:])
			binary.LittleEndian.PutUint64(out[2*j:], spreadResiduals(uint32(r))|spreadLanes(uint32(e))<<7)
			binary.LittleEndian.PutUint64(out[2*j+8:], spreadResiduals(uint32(r>>32))|spreadLanes(uint32(e>>32))<<7)
		}
		for ; j < len(exps); j++ {
			r := uint16(res[j])
			binary.LittleEndian.PutUint16(out[2*j:], r&0x80<<8|r&0x7F|uint16(exps[j])<<7)
		}
		return
	}
	g := geometry(dt)
	j := 0
	if dt == FP8E4M3 || dt == FP8E5M2 {
		j = joinFP8(out, exps, res[i0*int(g.resBits)/8:], dt)
	}
	mant := uint64(1)<<g.expShift - 1
	rr := bitReader{b: res[uint64(i0+j)*uint64(g.resBits)/8:]}
	for ; j < len(exps); j++ {
		r := rr.get(g.resBits)
		storeElem(out[j*g.size:], g.size, r&mant|uint64(exps[j])<<g.expShift|(r>>g.expShift)<<g.signShift)
	}
}

// joinFP8 is joinChunk for fp8, eight elements at a time (splitFP8 backwards, AVX-512 steps of 64 first where
// they run); it returns how many it joined.
// Exponents are below 16 (e4m3) or 32 (e5m2), as the table's range and escapes' widths guarantee.
func joinFP8(out, exps, res []byte, dt DType) int {
	n := len(exps) &^ 7
	j := 0
	if v := len(exps) &^ 63; (hasEntropyAsm || hasEntropyAVX2) && v > 0 {
		_, _ = out[v-1], res[v*int(geometry(dt).resBits)/8-1]
		switch {
		case dt == FP8E4M3 && hasEntropyAsm:
			joinE4M3AVX512(&exps[0], &res[0], &out[0], v)
		case dt == FP8E4M3:
			joinE4M3AVX2(&exps[0], &res[0], &out[0], v)
		case hasEntropyAsm:
			joinE5M2AVX512(&exps[0], &res[0], &out[0], v)
		default:
			joinE5M2AVX2(&exps[0], &res[0], &out[0], v)
		}
		j = v
	}
	if dt == FP8E4M3 {
		for ; j < n; j += 8 {
			y := spreadLanes(binary.LittleEndian.Uint32(res[j/2:])) // a byte of nibble pairs per 16-bit lane
			r := y&0x000F000F000F000F | (y>>4&0x000F000F000F000F)<<8
			e := binary.LittleEndian.Uint64(exps[j:])
			binary.LittleEndian.PutUint64(out[j:], (r&0x0808080808080808)<<4|e<<3|r&0x0707070707070707)
		}
		return n
	}
	for ; j < n; j += 8 {
		k := j / 8 * 3
		r := uint64(res[k]) | uint64(res[k+1])<<8 | uint64(res[k+2])<<16
		r = (r | r<<20) & 0x00000FFF00000FFF // eight 3-bit fields back to a byte each
		r = (r | r<<10) & 0x003F003F003F003F
		r = (r | r<<5) & 0x0707070707070707
		e := binary.LittleEndian.Uint64(exps[j:])
		binary.LittleEndian.PutUint64(out[j:], (r&0x0404040404040404)<<5|e<<2|r&0x0303030303030303)
	}
	return n
}

// spreadLanes puts four bytes into the low bytes of four 16-bit lanes.
func spreadLanes(e uint32) uint64 {
	x := uint64(e)
	x = (x | x<<16) & half32
	return (x | x<<8) & laneFF
}

// readCodeTable reads and checks an entropy frame's code table into lengths (2^eb + 1 entries, ESC last) and
// returns the longest code length.
func readCodeTable(ct []byte, dt DType, lengths []uint8) (int, error) {
	eb := dt.ExponentBits()
	lo, hi := int(ct[0]), int(ct[1])
	if hi < lo || hi >= 1<<eb {
		return 0, corrupt("code table range %d..%d for %s's exponents 0..%d", lo, hi, dt, 1<<eb-1)
	}
	if want := codeTableLen(lo, hi); uint64(len(ct)) != want {
		return 0, corrupt("code table of %d bytes, range %d..%d needs %d", len(ct), lo, hi, want)
	}
	nib := func(j int) uint8 { return ct[2+j/2] >> (4 * (j & 1)) & 15 }
	clear(lengths)
	lengths[escSymbol(eb)] = nib(0)
	coded := false
	for x := lo; x <= hi; x++ {
		lengths[x] = nib(1 + x - lo)
		coded = coded || lengths[x] > 0
	}
	if nibbles := hi - lo + 2; nibbles%2 == 1 && nib(nibbles) != 0 {
		return 0, corrupt("code table's unused last nibble is %d, not zero", nib(nibbles))
	}
	if coded && (lengths[lo] == 0 || lengths[hi] == 0) {
		return 0, corrupt("code table range %d..%d does not start and end at exponents with a code", lo, hi)
	}
	maxLen, msg := checkLengths(lengths)
	if msg != "" {
		return 0, corrupt("code table: %s", msg)
	}
	return maxLen, nil
}

// decodeEntropy decodes an entropy frame (its header checked) into out, or into segs when not nil.
func (d *Decoder) decodeEntropy(out []byte, segs *segments, frame []byte, h *Header) error {
	lay := h.Layout()
	dt := h.DType
	eb := dt.ExponentBits()
	lengths := d.lengths[:1<<eb+1]
	maxLen, err := readCodeTable(frame[lay.Codebook:lay.Codebook+uint64(h.CodebookLen)], dt, lengths)
	if err != nil {
		return err
	}
	if maxLen != int(h.CodeBits) {
		return corrupt("longest code is %d bits, the header says %d", maxLen, h.CodeBits)
	}
	// The chunk table: starts at 0, non-decreasing, within the streams.
	table := frame[lay.Table : lay.Table+4*lay.Chunks]
	prev := uint64(0)
	for c := uint64(0); c < lay.Chunks; c++ {
		v := uint64(binary.LittleEndian.Uint32(table[4*c:]))
		if c == 0 && v != 0 {
			return corrupt("chunk table starts at %d, not 0", v)
		}
		if v < prev || v > h.CodesLen {
			return corrupt("chunk %d's stream starts at byte %d (previous %d, streams are %d bytes)", c, v, prev, h.CodesLen)
		}
		prev = v
	}
	if lay.Chunks == 0 {
		return nil
	}
	d.entDec.build(lengths, eb)
	outLen := len(out)
	if segs != nil {
		outLen = segs.len()
	}
	parts := 1
	if outLen >= parallelMin {
		parts = min(d.o.concurrency, int(lay.Chunks))
	}
	for len(d.ent) < parts {
		d.ent = append(d.ent, &entDecPart{wg: &d.wg})
	}
	if len(d.entJobs) < parts {
		d.entJobs = make([]job, parts)
	}
	for i := range parts {
		p := d.ent[i]
		p.frame, p.lay, p.h, p.dec, p.out, p.segs, p.n = frame, lay, h, &d.entDec, out, segs, int(h.Elements)
		p.c0, p.c1 = int(lay.Chunks)*i/parts, int(lay.Chunks)*(i+1)/parts
		d.entJobs[i] = p
	}
	runParts(&d.wg, d.entJobs[:parts])
	var esc uint64
	for i := range parts {
		p := d.ent[i]
		p.out, p.segs, p.frame = nil, nil, nil
		if p.err != nil {
			return p.err
		}
		esc += p.esc
	}
	if esc != h.Escapes {
		return corrupt("%d escaped exponents, the header says %d", esc, h.Escapes)
	}
	return nil
}

// verifyChecksum checks the payload CRC of a frame that carries one.
func (d *Decoder) verifyChecksum(frame []byte, h *Header) error {
	if !h.Checksum {
		return nil
	}
	if got := d.crc.sum(frame[HeaderSize:h.FrameLen()], d.o.concurrency); got != h.PayloadCRC {
		return fmt.Errorf("%w: stored %08x, computed %08x over %d payload bytes", ErrChecksum, h.PayloadCRC, got, h.PayloadLen)
	}
	return nil
}
