package codec

import "encoding/binary"

// The generic path: any coded dtype, any code width from 1 to 8, one element at a time through bit-packed
// streams. It is the reference the fast paths are tested against, and what fp16, fp32 and fp8_e5m2 use.

func loadElem(b []byte, size int) uint64 {
	switch size {
	case 1:
		return uint64(b[0])
	case 2:
		return uint64(binary.LittleEndian.Uint16(b))
	case 4:
		return uint64(binary.LittleEndian.Uint32(b))
	}
	return binary.LittleEndian.Uint64(b)
}

func storeElem(b []byte, size int, v uint64) {
	switch size {
	case 1:
		b[0] = byte(v)
	case 2:
		binary.LittleEndian.PutUint16(b, uint16(v))
	case 4:
		binary.LittleEndian.PutUint32(b, uint32(v))
	default:
		binary.LittleEndian.PutUint64(b, v)
	}
}

// bitWriter appends fields of up to 24 bits, LSB first, to b starting at byte 0.
type bitWriter struct {
	b    []byte
	pos  int
	acc  uint64
	nacc uint
}

func (w *bitWriter) put(v uint64, bits uint) {
	w.acc |= v << w.nacc
	w.nacc += bits
	for w.nacc >= 8 {
		w.b[w.pos] = byte(w.acc)
		w.pos++
		w.acc >>= 8
		w.nacc -= 8
	}
}

// flush writes a last partial byte, its unused high bits zero.
func (w *bitWriter) flush() {
	if w.nacc > 0 {
		w.b[w.pos] = byte(w.acc)
		w.pos++
		w.acc, w.nacc = 0, 0
	}
}

// bitReader reads fields of up to 24 bits, LSB first.
type bitReader struct {
	b    []byte
	pos  int
	acc  uint64
	nacc uint
}

func (r *bitReader) get(bits uint) uint64 {
	for r.nacc < bits {
		r.acc |= uint64(r.b[r.pos]) << r.nacc
		r.pos++
		r.nacc += 8
	}
	v := r.acc & (1<<bits - 1)
	r.acc >>= bits
	r.nacc -= bits
	return v
}

// fieldGeometry is where sign, exponent and mantissa sit in an element of dtype dt.
type fieldGeometry struct {
	size      int
	expShift  uint // = mantissa width
	expMask   uint64
	signShift uint
	resBits   uint
}

func geometry(dt DType) fieldGeometry {
	in, _ := dt.info()
	return fieldGeometry{
		size: in.size, expShift: uint(in.expShift), expMask: 1<<in.expBits - 1,
		signShift: uint(in.size*8 - 1), resBits: uint(in.size*8) - uint(in.expBits),
	}
}

func encodeGeneric(p *encPart) {
	g := geometry(p.dt)
	bits := uint(p.tab.cb.Bits)
	mant := uint64(1)<<g.expShift - 1
	for c := p.c0; c < p.c1; c++ {
		i0, i1 := chunkBounds(c, p.n, DefaultChunk)
		cw := bitWriter{b: p.frame[p.lay.Codes+uint64(i0)*uint64(bits)/8:]}
		rw := bitWriter{b: p.frame[p.lay.Residuals+uint64(i0)*uint64(g.resBits)/8:]}
		before := len(p.esc)
		for i := i0; i < i1; i++ {
			v := loadElem(p.src[(i-p.s0)*g.size:], g.size)
			x := v >> g.expShift & g.expMask
			rw.put(v&mant|(v>>g.signShift)<<g.expShift, g.resBits)
			code := p.tab.code[x]
			if code < 0 {
				if !p.addEscape(i-i0, uint8(x)) {
					return
				}
				code = 0
			}
			cw.put(uint64(code), bits)
		}
		cw.flush()
		rw.flush()
		p.setChunkCount(c, (len(p.esc)-before)/escapeSize)
	}
}

func decodeGeneric(p *decPart) {
	g := geometry(p.h.DType)
	bits := uint(p.h.CodeBits)
	mant := uint64(1)<<g.expShift - 1
	i0, _ := chunkBounds(p.c0, p.n, p.h.ChunkLog2)
	_, i1 := chunkBounds(p.c1-1, p.n, p.h.ChunkLog2)
	cr := bitReader{b: p.frame[p.lay.Codes+uint64(i0)*uint64(bits)/8:]}
	rr := bitReader{b: p.frame[p.lay.Residuals+uint64(i0)*uint64(g.resBits)/8:]}
	for i := i0; i < i1; i++ {
		r := rr.get(g.resBits)
		x := uint64(p.tab.exp[cr.get(bits)])
		storeElem(p.out[(i-p.o0)*g.size:], g.size, r&mant|x<<g.expShift|(r>>g.expShift)<<g.signShift)
	}
}
