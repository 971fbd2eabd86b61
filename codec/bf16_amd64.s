//go:build amd64 && gc && !noasm

#include "textflag.h"

// vpermd index: the dwords 0, 4, 1, 5 (see encodeBF16AVX2).
DATA bf16CodeOrder<>+0(SB)/4, $0
DATA bf16CodeOrder<>+4(SB)/4, $4
DATA bf16CodeOrder<>+8(SB)/4, $1
DATA bf16CodeOrder<>+12(SB)/4, $5
DATA bf16CodeOrder<>+16(SB)/4, $2
DATA bf16CodeOrder<>+20(SB)/4, $6
DATA bf16CodeOrder<>+24(SB)/4, $3
DATA bf16CodeOrder<>+28(SB)/4, $7
GLOBL bf16CodeOrder<>(SB), RODATA|NOPTR, $32

// func encodeBF16AVX2(src, codes, res *byte, steps int, lut *encLUT) (done, mask int)
//
// One step: 32 bf16 values in Y0 (elements 0-15) and Y1 (16-31).
// Residual word = (x & 0x807F) summed bytewise by vpmaddubsw(·, 1): mantissa + sign<<7, at most 255.
// Exponent word = (x >> 7) & 0xFF. Packing words to bytes with vpackuswb interleaves the 128-bit lanes: the
// bytes come out as elements [0-7, 16-23 | 8-15, 24-31]. The residuals are put back in order with vpermq; the
// exponents are looked up in that order and the codes reordered once nibble-packed.
// Look-up: acc |= pshufb(lut[s], x & 15) & (x>>4 == hi[s]) over the slots s; acc is code+1, 0 for an escape.
TEXT ·encodeBF16AVX2(SB), NOSPLIT, $0-56
	MOVQ src+0(FP), SI
	MOVQ codes+8(FP), DI
	MOVQ res+16(FP), DX
	MOVQ steps+24(FP), CX
	MOVQ lut+32(FP), R8
	MOVQ 272(R8), R9 // slots in use
	XORQ AX, AX      // steps done
	XORQ R13, R13    // escape mask of the last step

	MOVL $0x807F807F, R10
	MOVQ R10, X15
	VPBROADCASTD X15, Y15 // residual bits of each word
	MOVL $0x01010101, R10
	MOVQ R10, X14
	VPBROADCASTD X14, Y14 // bytes 1
	MOVL $0x00FF00FF, R10
	MOVQ R10, X13
	VPBROADCASTD X13, Y13 // low byte of each word
	MOVL $0x0F0F0F0F, R10
	MOVQ R10, X12
	VPBROADCASTD X12, Y12 // low nibble of each byte
	MOVL $0x10011001, R10
	MOVQ R10, X11
	VPBROADCASTD X11, Y11 // byte pairs (1, 16): c0 + c1<<4
	VMOVDQU bf16CodeOrder<>(SB), Y10
	VPXOR Y9, Y9, Y9

	// The first two slots stay in registers: Y8/Y7 high nibble and table of slot 0, Y6/Y5 of slot 1.
	VPBROADCASTB 256(R8), Y8
	VBROADCASTI128 (R8), Y7
	VPBROADCASTB 257(R8), Y6
	VBROADCASTI128 16(R8), Y5

	TESTQ CX, CX
	JZ    done

loop:
	VMOVDQU (SI), Y0
	VMOVDQU 32(SI), Y1

	// Residuals.
	VPAND      Y15, Y0, Y2
	VPAND      Y15, Y1, Y3
	VPMADDUBSW Y14, Y2, Y2
	VPMADDUBSW Y14, Y3, Y3
	VPACKUSWB  Y3, Y2, Y2
	VPERMQ     $0xD8, Y2, Y2
	VMOVDQU    Y2, (DX)

	// Exponents: Y1 their high nibbles, Y0 their low nibbles.
	VPSRLW    $7, Y0, Y0
	VPSRLW    $7, Y1, Y1
	VPAND     Y13, Y0, Y0
	VPAND     Y13, Y1, Y1
	VPACKUSWB Y1, Y0, Y0
	VPSRLW    $4, Y0, Y1
	VPAND     Y12, Y1, Y1
	VPAND     Y12, Y0, Y0

	// Look-up, slots 0 and 1 (an unused slot's table is all 0: it adds nothing).
	VPCMPEQB Y8, Y1, Y3
	VPSHUFB  Y0, Y7, Y2
	VPAND    Y3, Y2, Y2
	VPCMPEQB Y6, Y1, Y3
	VPSHUFB  Y0, Y5, Y4
	VPAND    Y3, Y4, Y4
	VPOR     Y4, Y2, Y2
	CMPQ     R9, $2
	JBE      looked

	// Slots 2 and up, from memory.
	LEAQ 32(R8), R10
	LEAQ 258(R8), R11
	LEAQ -2(R9), R12

slots:
	VPBROADCASTB   (R11), Y3
	VBROADCASTI128 (R10), Y4
	VPCMPEQB       Y3, Y1, Y3
	VPSHUFB        Y0, Y4, Y4
	VPAND          Y3, Y4, Y4
	VPOR           Y4, Y2, Y2
	ADDQ           $16, R10
	INCQ           R11
	DECQ           R12
	JNZ            slots

looked:
	VPCMPEQB   Y9, Y2, Y3  // escapes
	VPSUBUSB   Y14, Y2, Y2 // codes, 0 for an escape
	VPMADDUBSW Y11, Y2, Y2 // code pairs, words
	VPACKUSWB  Y2, Y2, Y2  // dwords: [0-7, 16-23, -, - | 8-15, 24-31, -, -]
	VPERMD     Y2, Y10, Y2
	VMOVDQU    X2, (DI)
	VPMOVMSKB  Y3, R13

	ADDQ  $64, SI
	ADDQ  $32, DX
	ADDQ  $16, DI
	INCQ  AX
	TESTL R13, R13
	JNZ   done
	CMPQ  AX, CX
	JB    loop

done:
	MOVQ AX, done+40(FP)
	MOVQ R13, mask+48(FP)
	VZEROUPPER
	RET

// func decodeBF16AVX2(codes, res, out *byte, steps int, tab *[32]byte)
//
// One step: 16 code bytes, 32 residual bytes, 64 output bytes. The code bytes' dwords (8 elements each) are
// reordered to [0-7, 16-23, 8-15, 24-31], widened to words and split into nibbles, so that each 128-bit lane
// holds the codes of the elements [0-7, 16-23 | 8-15, 24-31], one per byte; the residuals are reordered the same
// way with vpermq. Low byte = (exp&1)<<7 | mantissa, high byte = sign | exp>>1; vpunpcklbw/vpunpckhbw then give
// elements 0-15 and 16-31 in order.
TEXT ·decodeBF16AVX2(SB), NOSPLIT, $0-40
	MOVQ codes+0(FP), SI
	MOVQ res+8(FP), DX
	MOVQ out+16(FP), DI
	MOVQ steps+24(FP), CX
	MOVQ tab+32(FP), R8

	VBROADCASTI128 (R8), Y15   // high byte of the exponent field
	VBROADCASTI128 16(R8), Y14 // low byte of the exponent field
	MOVL           $0x0F0F0F0F, R10
	MOVQ           R10, X13
	VPBROADCASTD   X13, Y13
	MOVL           $0x7F7F7F7F, R10
	MOVQ           R10, X12
	VPBROADCASTD   X12, Y12
	MOVL           $0x80808080, R10
	MOVQ           R10, X11
	VPBROADCASTD   X11, Y11

	TESTQ CX, CX
	JZ    ddone

dloop:
	VMOVDQU   (SI), X0
	VPSHUFD   $0xD8, X0, X0
	VPMOVZXBW X0, Y0
	VPSLLW    $4, Y0, Y1
	VPOR      Y1, Y0, Y0
	VPAND     Y13, Y0, Y0 // codes

	VPSHUFB Y0, Y15, Y1
	VPSHUFB Y0, Y14, Y2
	VPERMQ  $0xD8, (DX), Y3
	VPAND   Y11, Y3, Y4
	VPAND   Y12, Y3, Y3
	VPOR    Y4, Y1, Y1  // high bytes
	VPOR    Y3, Y2, Y2  // low bytes

	VPUNPCKLBW Y1, Y2, Y3
	VPUNPCKHBW Y1, Y2, Y4
	VMOVDQU    Y3, (DI)
	VMOVDQU    Y4, 32(DI)

	ADDQ $16, SI
	ADDQ $32, DX
	ADDQ $64, DI
	DECQ CX
	JNZ  dloop

ddone:
	VZEROUPPER
	RET
