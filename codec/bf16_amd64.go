//go:build amd64 && gc && !noasm

package codec

import "golang.org/x/sys/cpu"

// hasBF16Asm reports whether encodeBF16Nibbles and decodeBF16Nibbles run assembly kernels.
var hasBF16Asm = cpu.X86.HasAVX2

// The assembly kernels' steps: encode 64 elements (128 input bytes, 64 residual bytes, 32 code bytes), decode
// 32 elements (16 code bytes, 32 residual bytes, 64 output bytes). Chunks are whole steps.
const (
	bf16EncStep = 64
	bf16DecStep = 32
)

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

// encodeBF16AVX2 encodes up to steps 64-element steps: residuals to res (64 bytes a step), codes to codes (32
// bytes a step, escaped elements get the placeholder 0). It stops after the first step holding an escape and
// returns the steps done and that step's escape mask (nonzero iff it holds an escape; the bit order is not the
// element order).
//
//go:noescape
func encodeBF16AVX2(src, codes, res *byte, steps int, lut *encLUT) (done, mask int)

// decodeBF16AVX2 decodes steps 32-element steps from codes (16 bytes a step) and res (32 bytes a step) into out
// (64 bytes a step). tab[0:16] is the high byte of each code's exponent field (exp>>1), tab[16:32] the low byte
// ((exp&1)<<7).
//
//go:noescape
func decodeBF16AVX2(codes, res, out *byte, steps int, tab *[32]byte)

func encodeBF16Nibbles(p *encPart) {
	if !hasBF16Asm {
		encodeBF16NibblesGo(p)
		return
	}
	var lut encLUT
	lut.build(p.tab.cb.Exponents)
	codes := p.frame[p.lay.Codes:]
	res := p.frame[p.lay.Residuals:]
	for c := p.c0; c < p.c1; c++ {
		i0, i1 := chunkBounds(c, p.n)
		before := len(p.esc)
		i := i0
		if steps := (i1 - i0) / bf16EncStep; steps > 0 && lut.n > 0 {
			// Bounds checks for the whole steps: the assembly reads and writes nothing past them.
			end := i0 + steps*bf16EncStep
			_, _, _ = p.src[2*end-1], codes[end/2-1], res[end-1]
			for steps > 0 {
				done, mask := encodeBF16AVX2(&p.src[2*i], &codes[i/2], &res[i], steps, &lut)
				steps -= done
				i += done * bf16EncStep
				if mask != 0 && !p.escapesOf(i0, i-bf16EncStep, i) {
					return
				}
			}
		}
		if !encodeBF16Range(p, i0, i, i1) {
			return
		}
		p.setChunkCount(c, (len(p.esc)-before)/escapeSize)
	}
}

func decodeBF16Nibbles(p *decPart) {
	i0, _ := chunkBounds(p.c0, p.n)
	_, i1 := chunkBounds(p.c1-1, p.n)
	i := i0
	if steps := (i1 - i0) / bf16DecStep; hasBF16Asm && steps > 0 {
		var tab [32]byte
		for k := range 16 {
			x := p.tab.exp[k]
			tab[k], tab[16+k] = x>>1, x<<7
		}
		codes := p.frame[p.lay.Codes+uint64(i0/2):]
		res := p.frame[p.lay.Residuals+uint64(i0):]
		out := p.out[2*i0:]
		n := steps * bf16DecStep
		_, _, _ = codes[n/2-1], res[n-1], out[2*n-1]
		decodeBF16AVX2(&codes[0], &res[0], &out[0], steps, &tab)
		i += n
	}
	decodeBF16Range(p, i, i1)
}
