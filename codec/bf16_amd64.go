//go:build amd64 && gc && !noasm

package codec

import (
	"encoding/binary"
	"math/bits"
	"unsafe"

	"golang.org/x/sys/cpu"
)

// hasBF16Asm reports whether encodeBF16Nibbles and decodeBF16Nibbles run assembly kernels.
var hasBF16Asm = cpu.X86.HasAVX2

// The assembly kernels' steps: encode 64 elements (128 input bytes, 64 residual bytes, 32 code bytes), decode
// 32 elements (16 code bytes, 32 residual bytes, 64 output bytes). Chunks are whole steps.
const (
	bf16EncStep = 64
	bf16DecStep = 32
)

// encodeBF16AVX2 encodes up to steps 64-element steps: residuals to res (64 bytes a step), codes to codes (32
// bytes a step, escaped elements get the placeholder 0). It stops after the first step holding an escape and
// returns the steps done and that step's escape mask (nonzero iff it holds an escape; the bit order is not the
// element order). Each step prefetches the 128 bytes at pf, which moves along with src (see encPart.pf); a
// prefetch never faults, so pf need not point at valid memory.
//
//go:noescape
func encodeBF16AVX2(src, codes, res *byte, steps int, lut *encLUT, pf uintptr) (done, mask int)

// decodeBF16AVX2 decodes steps 32-element steps from codes (16 bytes a step) and res (32 bytes a step) into out
// (64 bytes a step). tab[0:16] is the high byte of each code's exponent field (exp>>1), tab[16:32] the low byte
// ((exp&1)<<7). Each step prefetches the 64 bytes at pf for writing, which moves along with out (see
// decPart.pf).
//
//go:noescape
func decodeBF16AVX2(codes, res, out *byte, steps int, tab *[32]byte, pf uintptr)

func encodeBF16Nibbles(p *encPart) {
	if !hasBF16Asm {
		encodeBF16NibblesGo(p)
		return
	}
	for c := p.c0; c < p.c1; c++ {
		i0, i1 := chunkBounds(c, p.n, DefaultChunk)
		before := len(p.esc)
		if !encodeBF16Span(p, i0, i0, i1) {
			return
		}
		p.setChunkCount(c, (len(p.esc)-before)/escapeSize)
	}
}

// encodeBF16Span encodes elements [i, i1) of the chunk that starts at element i0 (i-i0 even), reading p.src
// (which holds them from element p.s0 on) and recording their escapes; false once over the escape budget.
func encodeBF16Span(p *encPart, i0, i, i1 int) bool {
	if !hasBF16Asm {
		return encodeBF16Range(p, i0, i, i1)
	}
	lut := &p.tab.lut
	if steps := (i1 - i) / bf16EncStep; steps > 0 && lut.n > 0 {
		codes := p.frame[p.lay.Codes:]
		res := p.frame[p.lay.Residuals:]
		// Bounds checks for the whole steps: the assembly reads and writes nothing past them.
		end := i + steps*bf16EncStep
		_, _, _ = p.src[2*(end-p.s0)-1], codes[end/2-1], res[end-1]
		pf := p.pf
		if pf == 0 { // nothing to fetch ahead: the lines being read
			pf = uintptr(unsafe.Pointer(&p.src[2*(i-p.s0)]))
		}
		for steps > 0 {
			done, mask := encodeBF16AVX2(&p.src[2*(i-p.s0)], &codes[i/2], &res[i], steps, lut, pf)
			pf += uintptr(done * 2 * bf16EncStep)
			steps -= done
			i += done * bf16EncStep
			if mask != 0 && !p.escapesOfMask(i0, i-bf16EncStep, uint32(mask)) {
				return false
			}
		}
	}
	return encodeBF16Range(p, i0, i, i1)
}

// escapesOfMask records the escapes of the 64-element step at element i, given the assembly's mask: bit b
// stands for the step's elements e(b) and e(b)+32, where the packing order [0-7, 16-23, 8-15, 24-31] gives
// e(b) = b for bytes 0-7 and 24-31, b+8 for 8-15, b-8 for 16-23. Only those candidates are looked at.
func (p *encPart) escapesOfMask(i0, i int, mask uint32) bool {
	m := mask&0xFF0000FF | mask>>8&0xFF00 | mask<<8&0xFF0000 // bit e: element e or e+32 escapes
	for _, half := range [2]int{0, 32} {
		for b := m; b != 0; b &= b - 1 {
			j := i + half + bits.TrailingZeros32(b)
			if x := uint8(binary.LittleEndian.Uint16(p.src[2*(j-p.s0):]) >> 7); p.tab.code[x] < 0 {
				if !p.addEscape(j-i0, x) {
					return false
				}
			}
		}
	}
	return true
}

func decodeBF16Nibbles(p *decPart) {
	i0, _ := chunkBounds(p.c0, p.n, p.h.ChunkLog2)
	_, i1 := chunkBounds(p.c1-1, p.n, p.h.ChunkLog2)
	decodeBF16Span(p, i0, i1)
}

// decodeBF16Span decodes elements [i, i1), i even, escapes excluded, into p.out (which holds them from element
// p.o0 on).
func decodeBF16Span(p *decPart, i, i1 int) {
	if steps := (i1 - i) / bf16DecStep; hasBF16Asm && steps > 0 {
		codes := p.frame[p.lay.Codes+uint64(i/2):]
		res := p.frame[p.lay.Residuals+uint64(i):]
		out := p.out[2*(i-p.o0):]
		n := steps * bf16DecStep
		_, _, _ = codes[n/2-1], res[n-1], out[2*n-1]
		pf := p.pf
		if pf == 0 {
			pf = uintptr(unsafe.Pointer(&out[0]))
		}
		decodeBF16AVX2(&codes[0], &res[0], &out[0], steps, &p.tab.halves, pf)
		i += n
	}
	decodeBF16Range(p, i, i1)
}
