package codec

// CRC-32C (Castagnoli) of whole frames, computed while the encoder writes them: each part checksums its
// chunks' codes and residuals as it finishes them (in L1), and the pieces are combined in the frame's byte
// order, so a caller that checksums frames (the transport does) need not read the frame again.

const castagnoliReversed = 0x82F63B78

// multModP multiplies a and b modulo the CRC polynomial (bit-reversed: bit 31 is x^0), as zlib's multmodp.
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
			b = b>>1 ^ castagnoliReversed
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

// crcCombine returns the CRC-32C of A‖B from crcA, crcB and len(B).
func crcCombine(crcA, crcB uint32, lenB uint64) uint32 {
	p := uint32(1) << 31                            // x^0
	for k := 3; lenB != 0; lenB, k = lenB>>1, k+1 { // x^(8·lenB)
		if lenB&1 != 0 {
			p = multModP(x2n[k&31], p)
		}
	}
	return multModP(p, crcA) ^ crcB
}
