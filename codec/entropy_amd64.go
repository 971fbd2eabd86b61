//go:build amd64 && gc && !noasm

package codec

import "golang.org/x/sys/cpu"

// hasEntropyAsm reports whether the entropy decoder runs its fast steps in assembly (decodeLanesAVX512): the
// 32 lanes in one register of 16-bit buffers, a step's refills with one VPEXPANDB (the bytes of the lanes that
// take one, in lane order: what a warp does with ballot and popc), the 256-entry look-ups with VPERMI2B. A
// variable, so that tests run both paths.
var hasEntropyAsm = cpu.X86.HasAVX512F && cpu.X86.HasAVX512BW && cpu.X86.HasAVX512VL && cpu.X86.HasAVX512VBMI &&
	cpu.X86.HasAVX512VBMI2 && cpu.X86.HasPOPCNT

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
