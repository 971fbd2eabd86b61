//go:build amd64 && gc && !noasm

#include "textflag.h"

// func decodeLanesAVX512(stream *byte, n, steps int, tab *simdTab, st *[64]uint16, exps *byte) (done, pos, escapes int)
//
// Registers: Z0-Z3 the symbol table (256 bytes), Z4-Z7 the length-and-flags table, Z8 words of 8, Z9 of 0x0F,
// Z10 of 0x30 (ESC or invalid), Z11 of 0x20 (invalid), Z12 of 0x10 (ESC), Z13 of eb; X26 = eb, X27 = 16 - eb
// as shift counts. Z16 the lanes' buffers (16 bits each, unread bits at the top), Z17 their counts of unread
// bits. Z24, Z25, R12: the state at the start of the step, restored when the step holds an invalid code.
TEXT ·decodeLanesAVX512(SB), NOSPLIT, $0-72
	MOVQ stream+0(FP), SI
	MOVQ n+8(FP), DX
	MOVQ steps+16(FP), CX
	MOVQ tab+24(FP), R10
	MOVQ st+32(FP), BX
	MOVQ exps+40(FP), DI
	MOVQ SI, R11          // the stream's start
	SUBQ $64, DX          // a step may start while pos ≤ n − 64
	XORQ R8, R8           // steps done
	XORQ R9, R9           // escapes

	VMOVDQU64 0(R10), Z0
	VMOVDQU64 64(R10), Z1
	VMOVDQU64 128(R10), Z2
	VMOVDQU64 192(R10), Z3
	VMOVDQU64 256(R10), Z4
	VMOVDQU64 320(R10), Z5
	VMOVDQU64 384(R10), Z6
	VMOVDQU64 448(R10), Z7
	MOVQ 512(R10), AX     // eb
	VPBROADCASTW AX, Z13
	VMOVQ AX, X26
	MOVQ $16, R13
	SUBQ AX, R13
	VMOVQ R13, X27
	MOVL $8, AX
	VPBROADCASTW AX, Z8
	MOVL $0x0F, AX
	VPBROADCASTW AX, Z9
	MOVL $0x30, AX
	VPBROADCASTW AX, Z10
	MOVL $0x20, AX
	VPBROADCASTW AX, Z11
	MOVL $0x10, AX
	VPBROADCASTW AX, Z12
	VMOVDQU64 0(BX), Z16
	VMOVDQU64 64(BX), Z17

loop:
	CMPQ R8, CX
	JGE  done
	MOVQ SI, AX
	SUBQ R11, AX
	CMPQ AX, DX
	JGT  done
	VMOVDQA64 Z16, Z24
	VMOVDQA64 Z17, Z25
	MOVQ      SI, R12

	// Round 1: lanes with fewer than 8 bits take the next bytes, in lane order.
	VPCMPUW   $1, Z8, Z17, K1 // avail < 8
	VPEXPANDB.Z (SI), K1, Y18
	VPMOVZXBW Y18, Z18
	VPSUBW    Z17, Z8, Z19    // 8 − avail: where the byte goes under the unread bits
	VPSLLVW   Z19, Z18, Z18
	VPORQ     Z18, Z16, Z16
	VPADDW    Z8, Z17, K1, Z17
	KMOVD     K1, AX
	POPCNTL   AX, AX
	ADDQ      AX, SI

	// Look up each lane's top 8 bits: symbol and length-and-flags, 256 entries as two 128-entry halves.
	VPSRLW    $8, Z16, Z20
	VPMOVB2M  Z20, K2         // bit 7 of the index: the upper half
	VMOVDQA64 Z20, Z21
	VPERMI2B  Z1, Z0, Z21
	VMOVDQA64 Z20, Z22
	VPERMI2B  Z3, Z2, Z22
	VPBLENDMB Z22, Z21, K2, Z21 // symbols
	VMOVDQA64 Z20, Z22
	VPERMI2B  Z5, Z4, Z22
	VMOVDQA64 Z20, Z23
	VPERMI2B  Z7, Z6, Z23
	VPBLENDMB Z23, Z22, K2, Z22 // lengths and flags
	VPANDQ    Z9, Z22, Z23
	VPSLLVW   Z23, Z16, Z16
	VPSUBW    Z23, Z17, Z17
	VPTESTMW  Z10, Z22, K3
	KORTESTD  K3, K3
	JNZ       special

store:
	VPMOVWB Z21, (DI)
	ADDQ    $32, DI
	INCQ    R8
	JMP     loop

special:
	VPTESTMW Z11, Z22, K4
	KORTESTD K4, K4
	JNZ      bail

	// Round 2: ESC lanes with fewer than eb bits take the next bytes, then read eb raw bits.
	VPTESTMW  Z12, Z22, K5
	VPCMPUW   $1, Z13, Z17, K6 // avail < eb
	KANDD     K5, K6, K6
	VPEXPANDB.Z (SI), K6, Y18
	VPMOVZXBW Y18, Z18
	VPSUBW    Z17, Z8, Z19
	VPSLLVW   Z19, Z18, Z18
	VPORQ     Z18, Z16, Z16
	VPADDW    Z8, Z17, K6, Z17
	KMOVD     K6, AX
	POPCNTL   AX, AX
	ADDQ      AX, SI
	VPSRLW    X27, Z16, Z18
	VMOVDQU16 Z18, K5, Z21
	VPSLLW    X26, Z16, K5, Z16
	VPSUBW    Z13, Z17, K5, Z17
	KMOVD     K5, AX
	POPCNTL   AX, AX
	ADDQ      AX, R9
	JMP       store

bail:
	VMOVDQA64 Z24, Z16
	VMOVDQA64 Z25, Z17
	MOVQ      R12, SI

done:
	VMOVDQU64 Z16, 0(BX)
	VMOVDQU64 Z17, 64(BX)
	SUBQ      R11, SI
	MOVQ      R8, done+48(FP)
	MOVQ      SI, pos+56(FP)
	MOVQ      R9, escapes+64(FP)
	VZEROUPPER
	RET

// func joinBF16AVX512(exps, res, out *byte, n int)
//
// Joins n elements (a multiple of 32) of bf16: exponents (a byte each) and residuals (sign<<7 | mantissa, a
// byte each) into the elements, 64 output bytes a step.
TEXT ·joinBF16AVX512(SB), NOSPLIT, $0-32
	MOVQ exps+0(FP), SI
	MOVQ res+8(FP), BX
	MOVQ out+16(FP), DI
	MOVQ n+24(FP), CX
	MOVL $0x7F, AX
	VPBROADCASTW AX, Z1
	MOVL $0x80, AX
	VPBROADCASTW AX, Z2

join:
	CMPQ      CX, $32
	JLT       joined
	VPMOVZXBW (SI), Z3
	VPMOVZXBW (BX), Z4
	VPSLLW    $7, Z3, Z3
	VPANDQ    Z2, Z4, Z5
	VPSLLW    $8, Z5, Z5
	VPANDQ    Z1, Z4, Z4
	VPORQ     Z3, Z4, Z4
	VPORQ     Z5, Z4, Z4
	VMOVDQU64 Z4, (DI)
	ADDQ      $32, SI
	ADDQ      $32, BX
	ADDQ      $64, DI
	SUBQ      $32, CX
	JMP       join

joined:
	VZEROUPPER
	RET
