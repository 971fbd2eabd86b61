// Package crc32c combines CRC-32C (Castagnoli) checksums of adjacent pieces of a buffer, so that pieces
// checksummed where and when they are written (by parallel coders, block by block) give the checksum of the
// whole without reading it again. hash/crc32 computes the pieces; it has no combine.
package crc32c

const reversed = 0x82F63B78 // the Castagnoli polynomial, bit-reversed

// multModP multiplies a and b modulo the polynomial (bit-reversed: bit 31 is x^0), as zlib's multmodp.
func multModP(a, b uint32) uint32 {
	m := uint32(1) << 31
	var p uint32
	for {
		if a&m != 0 {
			p ^= b
			if a&(m-1) == 0 {
				break
			}
		}
		m >>= 1
		if b&1 != 0 {
			b = b>>1 ^ reversed
		} else {
			b >>= 1
		}
	}
	return p
}

// x2n[k] is x^(2^k) modulo the polynomial.
var x2n = func() (t [32]uint32) {
	p := uint32(1) << 30 // x^1
	for k := range t {
		t[k] = p
		p = multModP(p, p)
	}
	return t
}()

// Combine returns the CRC-32C of A‖B from crcA, crcB and len(B).
func Combine(crcA, crcB uint32, lenB uint64) uint32 {
	p := uint32(1) << 31                            // x^0
	for k := 3; lenB != 0; lenB, k = lenB>>1, k+1 { // x^(8·lenB)
		if lenB&1 != 0 {
			p = multModP(x2n[k&31], p)
		}
	}
	return multModP(p, crcA) ^ crcB
}
