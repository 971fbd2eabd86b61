package codec

import "encoding/binary"

// The bf16, 4-bit-code fast path. encodeBF16Nibbles and decodeBF16Nibbles (bf16_amd64.go, bf16_other.go) run
// assembly where the CPU has it and fall back to the pure-Go kernels here: eight elements per step with 64-bit
// SWAR arithmetic, one table look-up per pair of exponents, and escapes handled off the main loop (a step takes
// the slow path only when one of its eight exponents misses the codebook: about once in 1,250 steps on real KV).

const (
	lane7F = 0x007F007F007F007F // mantissa bits of four bf16 lanes
	lane80 = 0x0080008000800080 // sign bits, moved down to bit 7 of each lane
	laneFF = 0x00FF00FF00FF00FF
	half32 = 0x0000FFFF0000FFFF
)

// packResiduals turns four bf16 values into their four residual bytes (sign<<7 | mantissa).
func packResiduals(x uint64) uint64 {
	r := x&lane7F | (x>>8)&lane80
	r = (r | r>>8) & half32
	return (r | r>>16) & 0xFFFFFFFF
}

// encodeBF16NibblesGo is the pure-Go SWAR kernel: the fallback where there is no assembly, and the reference
// the assembly kernels are tested against.
func encodeBF16NibblesGo(p *encPart) {
	for c := p.c0; c < p.c1; c++ {
		i0, i1 := chunkBounds(c, p.n, DefaultChunk)
		before := len(p.esc)
		if !encodeBF16Range(p, i0, i0, i1) {
			return
		}
		p.setChunkCount(c, (len(p.esc)-before)/escapeSize)
	}
}

// encodeBF16Range encodes elements [i, i1) of the chunk that starts at element i0 (i-i0 even), recording their
// escapes; false once over the escape budget.
func encodeBF16Range(p *encPart, i0, i, i1 int) bool {
	pair := p.tab.pair
	codes := p.frame[p.lay.Codes:]
	res := p.frame[p.lay.Residuals:]
	for ; i+8 <= i1; i += 8 {
		s := p.src[2*(i-p.s0) : 2*(i-p.s0)+16]
		x0 := binary.LittleEndian.Uint64(s)
		x1 := binary.LittleEndian.Uint64(s[8:])
		binary.LittleEndian.PutUint64(res[i:i+8], packResiduals(x0)|packResiduals(x1)<<32)
		y0 := (x0 >> 7) & laneFF
		y0 |= y0 >> 8
		y1 := (x1 >> 7) & laneFF
		y1 |= y1 >> 8
		a, b := pair[uint16(y0)], pair[uint16(y0>>32)]
		cc, d := pair[uint16(y1)], pair[uint16(y1>>32)]
		binary.LittleEndian.PutUint32(codes[i/2:i/2+4], uint32(uint8(a))|uint32(uint8(b))<<8|uint32(uint8(cc))<<16|uint32(uint8(d))<<24)
		if (a|b|cc|d)&0x300 != 0 && !p.escapesOf(i0, i, i+8) {
			return false
		}
	}
	// Tail of the last chunk: element by element, the high nibble of an odd last byte stays zero.
	for ; i < i1; i++ {
		v := binary.LittleEndian.Uint16(p.src[2*(i-p.s0):])
		x := uint8(v >> 7)
		res[i] = uint8(v>>8)&0x80 | uint8(v)&0x7F
		code := p.tab.code[x]
		if code < 0 {
			if !p.addEscape(i-i0, x) {
				return false
			}
			code = 0
		}
		if i&1 == 0 {
			codes[i/2] = uint8(code)
		} else {
			codes[i/2] |= uint8(code) << 4
		}
	}
	return true
}

// escapesOf records the escapes among elements [i, j) of the chunk that starts at element i0, whose codes were
// written with placeholders; false once over the escape budget.
func (p *encPart) escapesOf(i0, i, j int) bool {
	for ; i < j; i++ {
		if x := uint8(binary.LittleEndian.Uint16(p.src[2*(i-p.s0):]) >> 7); p.tab.code[x] < 0 {
			if !p.addEscape(i-i0, x) {
				return false
			}
		}
	}
	return true
}

// spreadResiduals turns four residual bytes into four bf16 values with a zero exponent field.
func spreadResiduals(r uint32) uint64 {
	x := uint64(r)
	x = (x | x<<16) & half32
	x = (x | x<<8) & laneFF
	return x&lane7F | (x&lane80)<<8
}

// decodeBF16NibblesGo decodes chunks [c0, c1) of a bf16 frame with 4-bit codes, escapes excluded: the pure-Go
// SWAR kernel, fallback and reference.
func decodeBF16NibblesGo(p *decPart) {
	i0, _ := chunkBounds(p.c0, p.n, p.h.ChunkLog2)
	_, i1 := chunkBounds(p.c1-1, p.n, p.h.ChunkLog2)
	decodeBF16Range(p, i0, i1)
}

// decodeBF16Range decodes elements [i, i1), i even, escapes excluded.
func decodeBF16Range(p *decPart, i, i1 int) {
	pairs := &p.tab.pairs
	codes := p.frame[p.lay.Codes:]
	res := p.frame[p.lay.Residuals:]
	out := p.out
	for ; i+8 <= i1; i += 8 {
		c := binary.LittleEndian.Uint32(codes[i/2 : i/2+4])
		r := binary.LittleEndian.Uint64(res[i : i+8])
		o := out[2*(i-p.o0) : 2*(i-p.o0)+16]
		binary.LittleEndian.PutUint64(o, spreadResiduals(uint32(r))|uint64(pairs[uint8(c)])|uint64(pairs[uint8(c>>8)])<<32)
		binary.LittleEndian.PutUint64(o[8:], spreadResiduals(uint32(r>>32))|uint64(pairs[uint8(c>>16)])|uint64(pairs[uint8(c>>24)])<<32)
	}
	for ; i < i1; i++ {
		code := codes[i/2] >> (4 * (i & 1)) & 0xF
		r := uint16(res[i])
		binary.LittleEndian.PutUint16(out[2*(i-p.o0):], r&0x80<<8|r&0x7F|uint16(p.tab.exp[code])<<7)
	}
}

// encLUT is the AVX2 encoder's codebook look-up: an exponent x is looked up as lut[s][x&15] in the slot s whose
// high nibble hi[s] is x>>4. Entries hold code+1, 0 where the exponent escapes. The layout is read by
// bf16_amd64.s: lut at offset 0, hi at 256, n at 272.
type encLUT struct {
	lut [16][16]uint8
	hi  [16]uint8
	n   int // slots in use
}

// build fills the look-up from a codebook; slots are in order of first appearance.
func (l *encLUT) build(exponents []uint8) {
	var slot [16]int8
	for i := range slot {
		slot[i] = -1
	}
	for k, x := range exponents {
		if k >= 16 {
			break
		}
		h := x >> 4
		if slot[h] < 0 {
			slot[h] = int8(l.n)
			l.hi[l.n] = h
			l.n++
		}
		if l.lut[slot[h]][x&15] == 0 { // the first entry for an exponent is its code
			l.lut[slot[h]][x&15] = uint8(k + 1)
		}
	}
}
