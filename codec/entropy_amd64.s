//go:build amd64 && gc && !noasm

#include "go_asm.h"
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
	VMOVDQU8  (SI), Y18 // expanded from a register: from memory it is microcoded on AMD Zen 4
	VPEXPANDB.Z Y18, K1, Y18
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
	VMOVDQU8  (SI), Y18
	VPEXPANDB.Z Y18, K6, Y18
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

// func encodeStepsAVX512(exps *byte, steps int, tab *encTab, st *encSIMD, bytes *byte, stride int) (escapes int)
//
// Codes steps whole steps of 32 exponents (exps, 32 bytes a step), the first phase of the lane encoder
// (laneEnc.encodeLanesSIMD). Each lane keeps its bit count B and its newest bits (a 32-bit accumulator) in st.
// The 16-bit words a lane completes go, big-endian, into its bytes (lane l's at bytes + l·stride, word k at
// byte 2k): they wait in a register and are written every four steps, up to four words a lane in one 8-byte
// scatter element. On AMD Zen 4 a scatter costs about the same per element whatever its mask holds: one per
// 16 lanes and step took about a third of the encoder's time. Per step s it records the lanes
// that take a byte in round 2 of step s (st.r2[s]) and in round 1 of step s+1 (st.r1[s+1]): with
// w1 = (B0+15)>>3, w2 = max(w1, (B1+7)>>3), round 2 when w2 > w1 and round 1 next when (B1+15)>>3 > w2
// (FORMAT.md; for a symbol that is not ESC, w2 = w1). With x = (B1+7)>>3, (B1+15)>>3 is x+1, so these are
// x > w1 and x ≥ w1.
//
// The exponents are looked up two steps (64 bytes) at a time in tab's two 256-byte tables with VPERMI2B (a
// gather per 16 lanes cost more than the rest of the step): bits taken with the escape flag in bit 7, and the
// bit pattern's low byte; an escape's pattern above that byte is ESC's code, the same for every exponent
// (tab.hi).
//
// Registers: Z0, Z1 the bit counts of lanes 0-15 and 16-31, Z2, Z3 their accumulators; pending words of lanes
// 0-7, 8-15, 16-23 and 24-31 in Z25, Z5, Z31, Z11 (a qword a lane), 16 × their number in Z4, Z6, Z7, Z30; Z9,
// Z10 the lanes' offsets l·stride; Z8, Z12, Z13, Z14 the bits-taken table, Z15, Z27, Z28, Z29 the low-byte
// table; Z19 the exponents; Z16, Z17 their look-ups; DX the escape flags. Constants, tab.hi (512(R10)) and the
// byte swap come from memory.
TEXT ·encodeStepsAVX512(SB), NOSPLIT, $0-56
	MOVQ exps+0(FP), SI
	MOVQ steps+8(FP), CX
	MOVQ tab+16(FP), R10
	MOVQ st+24(FP), BX
	MOVQ bytes+32(FP), R14
	MOVQ stride+40(FP), AX
	VPBROADCASTD AX, Z12
	VMOVDQU32 ·laneIota(SB), Z13
	VPMULLD Z12, Z13, Z9
	VMOVDQU32 ·laneIota+64(SB), Z13
	VPMULLD Z12, Z13, Z10
	VMOVDQU8 0(R10), Z8
	VMOVDQU8 64(R10), Z12
	VMOVDQU8 128(R10), Z13
	VMOVDQU8 192(R10), Z14
	VMOVDQU8 256(R10), Z15
	VMOVDQU8 320(R10), Z27
	VMOVDQU8 384(R10), Z28
	VMOVDQU8 448(R10), Z29
	XORQ R8, R8 // step
	XORQ R9, R9 // escapes
	VPXORQ Z25, Z25, Z25
	VPXORQ Z5, Z5, Z5
	VPXORQ Z4, Z4, Z4
	VPXORQ Z6, Z6, Z6
	VPXORQ Z31, Z31, Z31
	VPXORQ Z11, Z11, Z11
	VPXORQ Z7, Z7, Z7
	VPXORQ Z30, Z30, Z30
	VMOVDQU32 0(BX), Z0
	VMOVDQU32 64(BX), Z1
	VMOVDQU32 128(BX), Z2
	VMOVDQU32 192(BX), Z3
	LEAQ 256(BX), R12   // r1
	LEAQ (4*(const_maxSteps+1))(R12), R13 // r2: after r1's maxSteps+1 words

// LANES16 codes one step's 16 lanes: XL, XC their bits-taken and low-byte look-ups (bytes), escape flags in the
// low 16 bits of AX, B and ACC their bit counts and accumulators. A lane that completes a word adds it to its
// pending words, a qword a lane (PA lanes 0-7, PB 8-15; big-endian words, the first in the low two bytes; CA,
// CB are 16 × their number). The lanes that take a byte in round 2 go to KR2, those that take one in round 1 of
// the next step to KR1.
#define LANES16(XL, XC, B, ACC, PA, PB, CA, CB, KR2, KR1) \
	KMOVW         AX, K2; \
	VPMOVZXBD     XL, Z18; \
	VPMOVZXBD     XC, Z19; \
	VPANDD.BCST   ·dword31(SB), Z18, Z18; \
	VPORD.BCST    512(R10), Z19, K2, Z19; \
	VPADDD        Z18, B, Z20; \
	VPSLLVD       Z18, ACC, ACC; \
	VPORD         Z19, ACC, ACC; \
	VPANDD.BCST   ·dword15(SB), Z20, Z21; \
	VPSRLVD       Z21, ACC, Z21; \
	VPSHUFB       ·swap16x4(SB), Z21, Z21; \
	VPANDD.BCST   ·dword15(SB), B, Z22; \
	VPADDD        Z18, Z22, Z22; \
	VPCMPUD.BCST  $5, ·dword16(SB), Z22, K2; \
	KSHIFTRW      $8, K2, K3; \
	VPMOVZXDQ     Y21, Z22; \
	VEXTRACTI64X4 $1, Z21, Y21; \
	VPMOVZXDQ     Y21, Z21; \
	VPSLLVQ       CA, Z22, Z22; \
	VPSLLVQ       CB, Z21, Z21; \
	VPORQ         Z22, PA, K2, PA; \
	VPORQ         Z21, PB, K3, PB; \
	VPADDQ.BCST   ·qword16(SB), CA, K2, CA; \
	VPADDQ.BCST   ·qword16(SB), CB, K3, CB; \
	VPADDD.BCST   ·dword15(SB), B, Z23; \
	VPSRLD        $3, Z23, Z23; \
	VPADDD.BCST   ·dword7(SB), Z20, Z24; \
	VPSRLD        $3, Z24, Z24; \
	VPCMPUD       $6, Z23, Z24, KR2; \
	VPCMPUD       $5, Z23, Z24, KR1; \
	VMOVDQA32     Z20, B

// FLUSH writes 16 lanes' pending words into their bytes (OFF their offsets), the first at byte 2·(B>>4) − C/8,
// as 8-byte scatters: a lane with fewer than four writes bytes that its next words overwrite (or that lie past
// its last byte the interleave takes). A lane completes at most a word a step (a symbol takes at most 16 bits),
// so four steps fill at most the 8 bytes. It empties PA, PB, CA and CB.
#define FLUSH(B, OFF, PA, PB, CA, CB) \
	VPSRLD        $4, B, Z26; \
	VPADDD        Z26, Z26, Z26; \
	VPADDD        OFF, Z26, Z26; \
	VPMOVQD       CA, Y24; \
	VPMOVQD       CB, Y23; \
	VINSERTI64X4  $1, Y23, Z24, Z24; \
	VPSRLD        $3, Z24, Z24; \
	VPSUBD        Z24, Z26, Z26; \
	KXNORW        K2, K2, K2; \
	VPSCATTERDQ   PA, K2, (R14)(Y26*1); \
	VEXTRACTI64X4 $1, Z26, Y26; \
	KXNORW        K2, K2, K2; \
	VPSCATTERDQ   PB, K2, (R14)(Y26*1); \
	VPXORQ        PA, PA, PA; \
	VPXORQ        PB, PB, PB; \
	VPXORQ        CA, CA, CA; \
	VPXORQ        CB, CB, CB

// STEP codes the step whose look-ups are bytes 32·H to 32·H+31 of Z16, Z17 and records its masks.
#define STEP(H) \
	VEXTRACTI32X4 $(2*H), Z16, X18; \
	VEXTRACTI32X4 $(2*H), Z17, X19; \
	MOVQ          DX, AX; \
	SHRQ          $(32*H), AX; \
	LANES16(X18, X19, Z0, Z2, Z25, Z5, Z4, Z6, K4, K5); \
	VEXTRACTI32X4 $(2*H+1), Z16, X18; \
	VEXTRACTI32X4 $(2*H+1), Z17, X19; \
	MOVQ          DX, AX; \
	SHRQ          $(32*H+16), AX; \
	LANES16(X18, X19, Z1, Z3, Z31, Z11, Z7, Z30, K7, K1); \
	KMOVW         K4, AX; \
	KMOVW         K7, DI; \
	SHLL          $16, DI; \
	ORL           DI, AX; \
	MOVL          AX, (R13)(R8*4); \
	KMOVW         K5, AX; \
	KMOVW         K1, DI; \
	SHLL          $16, DI; \
	ORL           DI, AX; \
	MOVL          AX, 4(R12)(R8*4); \
	ADDQ          $32, SI; \
	INCQ          R8

epair:
	MOVQ CX, AX
	SUBQ R8, AX
	JLE  edone
	MOVQ $-1, R11
	CMPQ AX, $2
	JGE  elookup
	MOVL $0xFFFFFFFF, R11 // one step left: its 32 exponents alone

elookup:
	KMOVQ       R11, K1
	VMOVDQU8.Z  (SI), K1, Z19
	VPMOVB2M    Z19, K1 // bit 7 of the exponent: the tables' upper halves
	VMOVDQA64   Z19, Z16
	VPERMI2B    Z12, Z8, Z16
	VMOVDQA64   Z19, Z18
	VPERMI2B    Z14, Z13, Z18
	VPBLENDMB   Z18, Z16, K1, Z16 // bits taken, escape flag
	VMOVDQA64   Z19, Z17
	VPERMI2B    Z27, Z15, Z17
	VPERMI2B    Z29, Z28, Z19
	VPBLENDMB   Z19, Z17, K1, Z17 // the bit pattern's low byte
	VPMOVB2M    Z16, K1
	KMOVQ       K1, DX
	ANDQ        R11, DX
	POPCNTQ     DX, AX
	ADDQ        AX, R9

	STEP(0)
	CMPQ R8, CX
	JGE  edone
	STEP(1)
	TESTQ $3, R8
	JNZ   epair
	FLUSH(Z0, Z9, Z25, Z5, Z4, Z6)
	FLUSH(Z1, Z10, Z31, Z11, Z7, Z30)
	JMP   epair

edone:
	FLUSH(Z0, Z9, Z25, Z5, Z4, Z6)
	FLUSH(Z1, Z10, Z31, Z11, Z7, Z30)
	VMOVDQU32 Z0, 0(BX)
	VMOVDQU32 Z1, 64(BX)
	VMOVDQU32 Z2, 128(BX)
	VMOVDQU32 Z3, 192(BX)
	MOVQ      R9, escapes+48(FP)
	VZEROUPPER
	RET

DATA ·dword31+0(SB)/4, $31
GLOBL ·dword31(SB), RODATA|NOPTR, $4
DATA ·dword7+0(SB)/4, $7
GLOBL ·dword7(SB), RODATA|NOPTR, $4

DATA ·dword15+0(SB)/4, $15
GLOBL ·dword15(SB), RODATA|NOPTR, $4
DATA ·dword16+0(SB)/4, $16
GLOBL ·dword16(SB), RODATA|NOPTR, $4
DATA ·qword16+0(SB)/8, $16
GLOBL ·qword16(SB), RODATA|NOPTR, $8

// swap16x4 swaps each dword's low two bytes and clears the others (VPSHUFB works within 16-byte lanes).
DATA ·swap16x4+0(SB)/8, $0x8080040580800001
DATA ·swap16x4+8(SB)/8, $0x80800c0d80800809
DATA ·swap16x4+16(SB)/8, $0x8080040580800001
DATA ·swap16x4+24(SB)/8, $0x80800c0d80800809
DATA ·swap16x4+32(SB)/8, $0x8080040580800001
DATA ·swap16x4+40(SB)/8, $0x80800c0d80800809
DATA ·swap16x4+48(SB)/8, $0x8080040580800001
DATA ·swap16x4+56(SB)/8, $0x80800c0d80800809
GLOBL ·swap16x4(SB), RODATA|NOPTR, $64

// func interleaveAVX512(bytes *byte, stride int, r1, r2 *uint32, steps int, out *byte) (n int)
//
// The lane encoder's interleave: for each step s, the lanes in r1[s] (round 1), then those in r2[s] (round 2),
// each take the next byte of their own bytes (lane l's at bytes + l·stride), in lane order, appended to out.
// Z0, Z1: lanes 0-15 and 16-31's addresses of their next bytes; Z16, Z17 their next four bytes, gathered every
// two steps (a lane takes at most a byte a round, two a step: the lanes' arrays must be followed by 3 readable
// bytes); Z2 dwords of 1.
TEXT ·interleaveAVX512(SB), NOSPLIT, $0-56
	MOVQ bytes+0(FP), SI
	MOVQ stride+8(FP), AX
	MOVQ r1+16(FP), R10
	MOVQ r2+24(FP), R11
	MOVQ steps+32(FP), CX
	MOVQ out+40(FP), DI
	MOVQ DI, R12
	// Lane offsets l·stride.
	VPBROADCASTD AX, Z3
	MOVL $1, DX
	VPBROADCASTD DX, Z2
	VPXORD Z0, Z0, Z0
	VMOVDQU32 ·laneIota(SB), Z4
	VPMULLD Z3, Z4, Z0
	VMOVDQU32 ·laneIota+64(SB), Z4
	VPMULLD Z3, Z4, Z1
	XORQ R8, R8

istep:
	CMPQ R8, CX
	JGE  idone
	TESTQ $1, R8
	JNZ  iround1
	KXNORW K1, K1, K1
	KXNORW K2, K2, K2
	VPGATHERDD (SI)(Z0*1), K1, Z16
	VPGATHERDD (SI)(Z1*1), K2, Z17

iround1:
	MOVL (R10)(R8*4), AX
	CALL ·interleaveRound(SB)
	MOVL (R11)(R8*4), AX
	TESTL AX, AX
	JZ   inext
	CALL ·interleaveRound(SB)

inext:
	INCQ R8
	JMP  istep

idone:
	SUBQ R12, DI
	MOVQ DI, n+48(FP)
	VZEROUPPER
	RET

// interleaveRound appends the next byte of each lane in the mask AX (lanes 0-31) to DI, in lane order, and
// moves those lanes on by a byte. It uses Z0, Z1 (the lanes' addresses), Z16, Z17 (their next bytes), Z2 (ones).
// The bytes are compressed in a register and stored under a byte mask: VPCOMPRESSB straight to memory is
// microcoded on AMD Zen 4, where it took over half of the encoder's time.
TEXT ·interleaveRound(SB), NOSPLIT|NOFRAME, $0-0
	KMOVD      AX, K3
	KMOVW      AX, K1
	SHRL       $16, AX
	KMOVW      AX, K2
	VPMOVDB    Z16, X18
	VPMOVDB    Z17, X19
	VINSERTI32X4 $1, X19, Y18, Y18
	VPCOMPRESSB Y18, K3, Y18
	KMOVD      K3, AX
	POPCNTL    AX, AX
	MOVL       $-1, DX
	BZHIL      AX, DX, DX
	KMOVD      DX, K4
	VMOVDQU8   Y18, K4, (DI)
	ADDQ       AX, DI
	VPSRLD     $8, Z16, K1, Z16
	VPSRLD     $8, Z17, K2, Z17
	VPADDD     Z2, Z0, K1, Z0
	VPADDD     Z2, Z1, K2, Z1
	RET

// func splitBF16AVX512(src, exps, res *byte, n int)
//
// Splits n bf16 elements (a multiple of 32) into their exponents and residuals (sign<<7 | mantissa), a byte
// each: 64 input bytes a step.
TEXT ·splitBF16AVX512(SB), NOSPLIT, $0-32
	MOVQ src+0(FP), SI
	MOVQ exps+8(FP), DI
	MOVQ res+16(FP), BX
	MOVQ n+24(FP), CX
	MOVL $0x7F, AX
	VPBROADCASTW AX, Z1
	MOVL $0x80, AX
	VPBROADCASTW AX, Z2

split:
	CMPQ      CX, $32
	JLT       splitted
	VMOVDQU64 (SI), Z3
	VPSRLW    $7, Z3, Z4 // exponent in the low byte (the sign above it is dropped by VPMOVWB)
	VPMOVWB   Z4, (DI)
	VPSRLW    $8, Z3, Z5
	VPANDQ    Z2, Z5, Z5 // sign at bit 7
	VPANDQ    Z1, Z3, Z3 // mantissa
	VPORQ     Z5, Z3, Z3
	VPMOVWB   Z3, (BX)
	ADDQ      $64, SI
	ADDQ      $32, DI
	ADDQ      $32, BX
	SUBQ      $32, CX
	JMP       split

splitted:
	VZEROUPPER
	RET

// func splitE4M3AVX512(src, exps, res *byte, n int)
//
// Splits n fp8 e4m3 elements (a multiple of 64; s eeee mmm) into their exponents, a byte each, and residuals
// (s mmm), two to a byte, the first in the low nibble: 64 elements a step.
TEXT ·splitE4M3AVX512(SB), NOSPLIT, $0-32
	MOVQ src+0(FP), SI
	MOVQ exps+8(FP), DI
	MOVQ res+16(FP), BX
	MOVQ n+24(FP), CX
	MOVL $0x0F, AX
	VPBROADCASTB AX, Z1
	MOVL $0x07, AX
	VPBROADCASTB AX, Z2
	MOVL $0x08, AX
	VPBROADCASTB AX, Z3
	MOVL $0x1001, AX
	VPBROADCASTW AX, Z4 // byte weights 1 and 16: a pair of residuals into one byte

e4split:
	CMPQ       CX, $64
	JLT        e4splitted
	VMOVDQU64  (SI), Z0
	VPSRLW     $3, Z0, Z5
	VPANDQ     Z1, Z5, Z5 // exponents
	VMOVDQU64  Z5, (DI)
	VPSRLW     $4, Z0, Z6 // sign at bit 3
	VPANDQ     Z2, Z0, Z7 // mantissa
	VPTERNLOGD $0xF8, Z3, Z6, Z7 // Z7 | Z6&0x08
	VPMADDUBSW Z4, Z7, Z7
	VPMOVWB    Z7, (BX)
	ADDQ       $64, SI
	ADDQ       $64, DI
	ADDQ       $32, BX
	SUBQ       $64, CX
	JMP        e4split

e4splitted:
	VZEROUPPER
	RET

// func joinE4M3AVX512(exps, res, out *byte, n int)
//
// Joins n fp8 e4m3 elements (a multiple of 64) from exponents below 16 and nibble-paired residuals
// (splitE4M3AVX512 backwards): 64 elements a step.
TEXT ·joinE4M3AVX512(SB), NOSPLIT, $0-32
	MOVQ exps+0(FP), SI
	MOVQ res+8(FP), BX
	MOVQ out+16(FP), DI
	MOVQ n+24(FP), CX
	MOVL $0x0F, AX
	VPBROADCASTB AX, Z1
	MOVL $0x07, AX
	VPBROADCASTB AX, Z2
	MOVL $0x80, AX
	VPBROADCASTB AX, Z3

e4join:
	CMPQ       CX, $64
	JLT        e4joined
	VPMOVZXBW  (BX), Z0 // a residual pair per word: ba
	VPSLLW     $4, Z0, Z4
	VPTERNLOGD $0xA8, Z1, Z4, Z0 // (Z0 | Z4) & 0x0F: 0b0a, a residual per byte
	VMOVDQU64  (SI), Z5
	VPSLLW     $3, Z5, Z5 // exponent under the sign
	VPSLLW     $4, Z0, Z6
	VPANDQ     Z3, Z6, Z6 // sign at bit 7
	VPANDQ     Z2, Z0, Z0 // mantissa
	VPTERNLOGD $0xFE, Z6, Z5, Z0 // Z0 | Z5 | Z6
	VMOVDQU64  Z0, (DI)
	ADDQ       $64, SI
	ADDQ       $32, BX
	ADDQ       $64, DI
	SUBQ       $64, CX
	JMP        e4join

e4joined:
	VZEROUPPER
	RET

// func splitE5M2AVX512(src, exps, res *byte, n int)
//
// Splits n fp8 e5m2 elements (a multiple of 64; s eeeee mm) into their exponents, a byte each, and residuals
// (s mm), eight to three bytes, the first in the lowest bits: 64 elements a step. Pairs of 3-bit fields merge
// by multiply-adds into 6 bits a word and 12 a dword, a qword's two dwords into its low 24 bits by a shift, and
// a byte permute gathers those three bytes of each qword.
TEXT ·splitE5M2AVX512(SB), NOSPLIT, $0-32
	MOVQ src+0(FP), SI
	MOVQ exps+8(FP), DI
	MOVQ res+16(FP), BX
	MOVQ n+24(FP), CX
	MOVL $0x1F, AX
	VPBROADCASTB AX, Z1
	MOVL $0x03, AX
	VPBROADCASTB AX, Z2
	MOVL $0x04, AX
	VPBROADCASTB AX, Z3
	MOVL $0x0801, AX
	VPBROADCASTW AX, Z4 // byte weights 1 and 8
	MOVL $0x00400001, AX
	VPBROADCASTD AX, Z8 // word weights 1 and 64
	VMOVDQU64 ·e5m2Pack(SB), Z9
	MOVL $0xFFFFFF, AX
	KMOVQ AX, K1

e5split:
	CMPQ       CX, $64
	JLT        e5splitted
	VMOVDQU64  (SI), Z0
	VPSRLW     $2, Z0, Z5
	VPANDQ     Z1, Z5, Z5 // exponents
	VMOVDQU64  Z5, (DI)
	VPSRLW     $5, Z0, Z6 // sign at bit 2
	VPANDQ     Z2, Z0, Z7 // mantissa
	VPTERNLOGD $0xF8, Z3, Z6, Z7 // Z7 | Z6&0x04
	VPMADDUBSW Z4, Z7, Z7 // 6 bits a word
	VPMADDWD   Z8, Z7, Z7 // 12 bits a dword
	VPSRLQ     $20, Z7, Z6
	VPORQ      Z6, Z7, Z7 // 24 bits in each qword's low three bytes
	VPERMB     Z7, Z9, Z7
	VMOVDQU8   Z7, K1, (BX)
	ADDQ       $64, SI
	ADDQ       $64, DI
	ADDQ       $24, BX
	SUBQ       $64, CX
	JMP        e5split

e5splitted:
	VZEROUPPER
	RET

// func joinE5M2AVX512(exps, res, out *byte, n int)
//
// Joins n fp8 e5m2 elements (a multiple of 64) from exponents below 32 and residuals eight to three bytes
// (splitE5M2AVX512 backwards): 64 elements a step.
TEXT ·joinE5M2AVX512(SB), NOSPLIT, $0-32
	MOVQ exps+0(FP), SI
	MOVQ res+8(FP), BX
	MOVQ out+16(FP), DI
	MOVQ n+24(FP), CX
	MOVQ $0x00000FFF00000FFF, AX
	VPBROADCASTQ AX, Z1
	MOVL $0x003F003F, AX
	VPBROADCASTD AX, Z2
	MOVL $0x07, AX
	VPBROADCASTB AX, Z3
	MOVL $0x03, AX
	VPBROADCASTB AX, Z4
	MOVL $0x80, AX
	VPBROADCASTB AX, Z8
	VMOVDQU64 ·e5m2Spread(SB), Z9
	MOVL $0xFFFFFF, AX
	KMOVQ AX, K1
	MOVQ $0x0707070707070707, AX
	KMOVQ AX, K2

e5join:
	CMPQ       CX, $64
	JLT        e5joined
	VMOVDQU8.Z (BX), K1, Z0
	VPERMB.Z   Z0, Z9, K2, Z0 // three bytes, 24 bits, a qword
	VPSLLQ     $20, Z0, Z5
	VPTERNLOGD $0xA8, Z1, Z5, Z0 // 12 bits a dword
	VPSLLD     $10, Z0, Z5
	VPTERNLOGD $0xA8, Z2, Z5, Z0 // 6 bits a word
	VPSLLW     $5, Z0, Z5
	VPTERNLOGD $0xA8, Z3, Z5, Z0 // a residual a byte
	VMOVDQU64  (SI), Z5
	VPSLLW     $2, Z5, Z5 // exponent under the sign
	VPSLLW     $5, Z0, Z6
	VPANDQ     Z8, Z6, Z6 // sign at bit 7
	VPANDQ     Z4, Z0, Z0 // mantissa
	VPTERNLOGD $0xFE, Z6, Z5, Z0 // Z0 | Z5 | Z6
	VMOVDQU64  Z0, (DI)
	ADDQ       $64, SI
	ADDQ       $24, BX
	ADDQ       $64, DI
	SUBQ       $64, CX
	JMP        e5join

e5joined:
	VZEROUPPER
	RET

// e5m2Pack gathers bytes 0-2 of each qword (splitE5M2AVX512); e5m2Spread puts three bytes into each qword's
// low bytes (joinE5M2AVX512, the other bytes zeroed by its mask).
DATA ·e5m2Pack+0(SB)/8, $0x11100a0908020100
DATA ·e5m2Pack+8(SB)/8, $0x282221201a191812
DATA ·e5m2Pack+16(SB)/8, $0x3a39383231302a29
DATA ·e5m2Pack+24(SB)/8, $0x0000000000000000
DATA ·e5m2Pack+32(SB)/8, $0x0000000000000000
DATA ·e5m2Pack+40(SB)/8, $0x0000000000000000
DATA ·e5m2Pack+48(SB)/8, $0x0000000000000000
DATA ·e5m2Pack+56(SB)/8, $0x0000000000000000
GLOBL ·e5m2Pack(SB), RODATA|NOPTR, $64

DATA ·e5m2Spread+0(SB)/8, $0x0000000000020100
DATA ·e5m2Spread+8(SB)/8, $0x0000000000050403
DATA ·e5m2Spread+16(SB)/8, $0x0000000000080706
DATA ·e5m2Spread+24(SB)/8, $0x00000000000b0a09
DATA ·e5m2Spread+32(SB)/8, $0x00000000000e0d0c
DATA ·e5m2Spread+40(SB)/8, $0x000000000011100f
DATA ·e5m2Spread+48(SB)/8, $0x0000000000141312
DATA ·e5m2Spread+56(SB)/8, $0x0000000000171615
GLOBL ·e5m2Spread(SB), RODATA|NOPTR, $64
