//go:build amd64 && gc && !noasm

package codec

import (
	"math/bits"

	"golang.org/x/sys/cpu"
)

// hasEntropyAsm reports whether the entropy decoder runs its fast steps in assembly (decodeLanesAVX512): the
// 32 lanes in one register of 16-bit buffers, a step's refills with one VPEXPANDB (the bytes of the lanes that
// take one, in lane order: what a warp does with ballot and popc), the 256-entry look-ups with VPERMI2B. A
// variable, so that tests run both paths.
var hasEntropyAsm = cpu.X86.HasAVX512F && cpu.X86.HasAVX512BW && cpu.X86.HasAVX512VL && cpu.X86.HasAVX512VBMI &&
	cpu.X86.HasAVX512VBMI2 && cpu.X86.HasPOPCNT && cpu.X86.HasBMI2

// hasEntropyAVX2 reports whether, on a CPU without hasEntropyAsm's AVX-512, the entropy coder runs in AVX2:
// the decoder's fast steps (decodeLanesAVX2), the lane encoder (encodeStepsAVX2, interleaveAVX2), and the split
// and join of bf16 (splitBF16AVX2, joinBF16AVX2) and of fp8 (splitE4M3AVX2, joinE4M3AVX2 and their e5m2 twins).
var hasEntropyAVX2 = !hasEntropyAsm && cpuHasEntropyAVX2

// cpuHasEntropyAVX2 reports whether the CPU runs the AVX2 coder, chosen (hasEntropyAVX2) or not.
var cpuHasEntropyAVX2 = cpu.X86.HasAVX2 && cpu.X86.HasPOPCNT && cpu.X86.HasBMI1 && cpu.X86.HasBMI2

// decodeLanesAVX2 is decodeLanesAVX512 in AVX2 (same state and results): the 32 lanes in four registers of 8
// 32-bit buffers (16 bits used, as decodeLanesAVX512's), a group's refill bytes spread to its lanes by a
// permute from a table indexed by the group's refill mask, the look-ups gathered from tab.ent. Step s also
// prefetches out[64s:] for writing and res[32s:] (the chunk's join: laneDec.out and res).
//
//go:noescape
func decodeLanesAVX2(stream *byte, n, steps int, tab *simdTab, st *[2 * lanes]uint16, exps *byte, out, res *byte) (done, pos, escapes int)

// encodeStepsAVX2 is encodeStepsAVX512 in AVX2 (the same scratch and lane bytes written, lanes maxLaneBytes
// apart, but only the words a step completes), from the 32-bit look-up table lut (entEnc.lut). ev is scratch
// for the completed words (encSIMD.ev). Step s also prefetches next[64s:] and, for writing, nextRes[32s:]
// (laneEnc.next and nextRes) and stream[16s:] (where the chunk's stream goes).
//
//go:noescape
func encodeStepsAVX2(exps *byte, steps int, lut *[256]uint32, st *encSIMD, bytes *byte, ev *uint32, next, nextRes, stream *byte) (escapes int)

// encodeStepsNarrowAVX2 is encodeStepsAVX2 looking a step's exponents up in nt's 16-entry tables (nt.ok).
//
//go:noescape
func encodeStepsNarrowAVX2(exps *byte, steps int, nt *encNarrow, st *encSIMD, bytes *byte, ev *uint32, next, nextRes, stream *byte) (escapes int)

// sixteens is 16 in every byte: encodeStepsNarrowAVX2's test for exponents outside its tables.
var sixteens = [32]byte{16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16,
	16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16}

// laneOffsets[l] is lane l's bytes in laneEnc.bytes (interleaveAVX2's gathers).
var laneOffsets = func() (o [lanes]uint32) {
	for l := range o {
		o[l] = uint32(l * maxLaneBytes)
	}
	return o
}()

// encodeStepsAVX2's events of completed words: laneWords16[l] is (laneOffsets[l] − 2) << 16 (a completed
// word's offset << 16 is this plus (B >> 4) << 17, B the lane's bits after it), bswap16d swaps the low two
// bytes of each 32-bit word and clears the others, and compressIdx[m] moves the words of the lanes in m (8
// bits) to the front, in order (VPERMD).
var (
	laneWords16 = func() (o [lanes]uint32) {
		for l := range o {
			o[l] = (laneOffsets[l] - 2) << 16 // lane 0's wraps; the sum does not
		}
		return o
	}()
	bswap16d    = lanePattern(1, 0, -1, -1, 5, 4, -1, -1, 9, 8, -1, -1, 13, 12, -1, -1)
	compressIdx = func() (t [256][8]uint32) {
		for m := range t {
			for k, j := range maskLanes(m) {
				t[m][k] = uint32(j)
			}
		}
		return t
	}()
)

// interleaveAVX2 is interleaveAVX512 in AVX2, lanes maxLaneBytes apart; out needs 8 bytes past the stream.
//
//go:noescape
func interleaveAVX2(bytes *byte, r1, r2 *uint32, steps int, out *byte) (n int)

// interleaveAVX2's constants: lowBytes picks each 32-bit word's low byte into the low word of its 128-bit half
// (VPSHUFB), lowBytesOrder joins the two halves' into the low qword (VPERMD), compress8[m] moves the bytes of
// the lanes in m (8 bits) to the front, in order (VPSHUFB), and laneShift8[m] is 8 in the words of the lanes
// in m (a byte's bits: the windows' shift and the counts' step).
var (
	lowBytes = [32]byte{0, 4, 8, 12, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
		0, 4, 8, 12, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80}
	lowBytesOrder = [8]uint32{0, 4, 1, 1, 1, 1, 1, 1}
	compress8     = func() (t [256][16]byte) {
		for m := range t {
			lanes := maskLanes(m)
			for k := range t[m] {
				t[m][k] = 0x80
				if k < len(lanes) {
					t[m][k] = byte(lanes[k])
				}
			}
		}
		return t
	}()
	laneShift8 = func() (t [256][8]uint32) {
		for m := range t {
			for j := range 8 {
				t[m][j] = uint32(m>>j&1) * 8
			}
		}
		return t
	}()
)

// maskLanes lists the lanes of an 8-lane group in mask m, in order.
func maskLanes(m int) []int {
	var l []int
	for j := range 8 {
		if m>>j&1 != 0 {
			l = append(l, j)
		}
	}
	return l
}

// splitBF16AVX2 is splitBF16AVX512 in AVX2 (n a multiple of 32).
//
//go:noescape
func splitBF16AVX2(src, exps, res *byte, n int)

// joinBF16AVX2 is joinBF16AVX512 in AVX2 (n a multiple of 32).
//
//go:noescape
func joinBF16AVX2(exps, res, out *byte, n int)

// expandIdx[m] spreads the bytes of a refill to the lanes of an 8-lane group whose refill mask is m: lane j
// takes byte popcount(m & (1<<j − 1)) (decodeLanesAVX2's VPERMD indices; lanes not in m are masked off).
var expandIdx = func() (t [256][8]uint32) {
	for m := range t {
		for j := range 8 {
			t[m][j] = uint32(bits.OnesCount8(uint8(m) & (1<<j - 1)))
		}
	}
	return t
}()

// packOrder puts decodeLanesAVX2's packed exponents back in lane order (VPACK* work per 128-bit half).
var packOrder = [8]uint32{0, 4, 1, 5, 2, 6, 3, 7}

// decodeLanesAVX2's masks: a code length (entry >> 8), a lane's 16-bit buffer, an entry's exponent.
var (
	dwords0F   = [8]uint32{0x0F, 0x0F, 0x0F, 0x0F, 0x0F, 0x0F, 0x0F, 0x0F}
	dwordsFFFF = [8]uint32{0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF}
	dwordsFF   = [8]uint32{0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF}
)

// decodeLanesAVX512 decodes up to steps whole steps (32 lanes each) of a chunk's stream of n bytes into exps
// (32 bytes a step), while at least 64 stream bytes remain from the current position. st holds the lanes'
// state, read and written back: 32 16-bit buffers (unread bits MSB-aligned) then 32 counts of unread bits. It
// stops before a step in which a lane's bits start no code (the Go path then reports it). It returns the steps
// done, the stream bytes taken and the escapes decoded.
//
//go:noescape
func decodeLanesAVX512(stream *byte, n, steps int, tab *simdTab, st *[2 * lanes]uint16, exps *byte) (done, pos, escapes int)

// joinBF16AVX512 joins n bf16 elements (n a multiple of 32) from their exponents and residuals (a byte each)
// into out (2n bytes).
//
//go:noescape
func joinBF16AVX512(exps, res, out *byte, n int)

// encodeStepsAVX512 runs the first phase of the lane encoder (laneEnc.encodeLanesSIMD) on steps whole steps of
// exps: see the assembly for what it writes into st and the lanes' bytes. It returns the number of escaped
// exponents.
//
//go:noescape
func encodeStepsAVX512(exps *byte, steps int, tab *encTab, st *encSIMD, bytes *byte, stride int) (escapes int)

// laneIota is 0, 1, …, 31 (interleaveAVX512's lane numbers).
var laneIota = [lanes]uint32{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31}

// interleaveAVX512 writes the lanes' bytes in the order the decoder takes them (the lane encoder's last phase):
// see the assembly. It returns the bytes written.
//
//go:noescape
func interleaveAVX512(bytes *byte, stride int, r1, r2 *uint32, steps int, out *byte) (n int)

// splitBF16AVX512 splits n bf16 elements (n a multiple of 32) of src into their exponents and residuals (a
// byte each).
//
//go:noescape
func splitBF16AVX512(src, exps, res *byte, n int)

// splitE4M3AVX512 and splitE5M2AVX512 split n fp8 elements (n a multiple of 64) of src into their exponents (a
// byte each) and packed residuals (splitFP8's layout).
//
//go:noescape
func splitE4M3AVX512(src, exps, res *byte, n int)

//go:noescape
func splitE5M2AVX512(src, exps, res *byte, n int)

// joinE4M3AVX512 and joinE5M2AVX512 join n fp8 elements (n a multiple of 64) from their exponents and packed
// residuals (joinFP8's layout) into out.
//
//go:noescape
func joinE4M3AVX512(exps, res, out *byte, n int)

//go:noescape
func joinE5M2AVX512(exps, res, out *byte, n int)

// splitE4M3AVX2, splitE5M2AVX2, joinE4M3AVX2 and joinE5M2AVX2 are their AVX-512 twins in AVX2 (n a multiple
// of 64).
//
//go:noescape
func splitE4M3AVX2(src, exps, res *byte, n int)

//go:noescape
func splitE5M2AVX2(src, exps, res *byte, n int)

//go:noescape
func joinE4M3AVX2(exps, res, out *byte, n int)

//go:noescape
func joinE5M2AVX2(exps, res, out *byte, n int)

// The AVX2 e5m2 kernels' shuffles. splitE5M2AVX2 packs each 128-bit lane's two quadwords (3 bytes each) to
// bytes 0-5 (e5PackLo) or 6-11 (e5PackHi) and then moves the high lane's 12 bytes after the low lane's
// (e5PackOrder). joinE5M2AVX2 does the reverse: 12 bytes a lane (e5UnpackOrder), then a lane's first or
// last two 3-byte groups to the low bytes of its quadwords (e5UnpackLo, e5UnpackHi).
var (
	e5PackLo      = lanePattern(0, 1, 2, 8, 9, 10, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1)
	e5PackHi      = lanePattern(-1, -1, -1, -1, -1, -1, 0, 1, 2, 8, 9, 10, -1, -1, -1, -1)
	e5PackOrder   = [8]uint32{0, 1, 2, 4, 5, 6, 7, 7}
	e5UnpackOrder = [8]uint32{0, 1, 2, 0, 3, 4, 5, 0}
	e5UnpackLo    = lanePattern(0, 1, 2, -1, -1, -1, -1, -1, 3, 4, 5, -1, -1, -1, -1, -1)
	e5UnpackHi    = lanePattern(6, 7, 8, -1, -1, -1, -1, -1, 9, 10, 11, -1, -1, -1, -1, -1)
)

// lanePattern is a VPSHUFB pattern, the same in both 128-bit lanes; −1 zeroes a byte.
func lanePattern(b ...int) (p [32]byte) {
	for i, x := range b {
		if x < 0 {
			x = 0x80
		}
		p[i], p[16+i] = byte(x), byte(x)
	}
	return p
}
