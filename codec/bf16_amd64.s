//go:build amd64 && gc && !noasm

#include "textflag.h"

// vpermd index: the dwords 0, 4, 1, 5, 2, 6, 3, 7 (see encodeBF16AVX2).
DATA bf16CodeOrder<>+0(SB)/4, $0
DATA bf16CodeOrder<>+4(SB)/4, $4
DATA bf16CodeOrder<>+8(SB)/4, $1
DATA bf16CodeOrder<>+12(SB)/4, $5
DATA bf16CodeOrder<>+16(SB)/4, $2
DATA bf16CodeOrder<>+20(SB)/4, $6
DATA bf16CodeOrder<>+24(SB)/4, $3
DATA bf16CodeOrder<>+28(SB)/4, $7
GLOBL bf16CodeOrder<>(SB), RODATA|NOPTR, $32

// sign and mantissa bits of each bf16 word
DATA bf16ResidualBits<>+0(SB)/4, $0x807f807f
DATA bf16ResidualBits<>+4(SB)/4, $0x807f807f
DATA bf16ResidualBits<>+8(SB)/4, $0x807f807f
DATA bf16ResidualBits<>+12(SB)/4, $0x807f807f
DATA bf16ResidualBits<>+16(SB)/4, $0x807f807f
DATA bf16ResidualBits<>+20(SB)/4, $0x807f807f
DATA bf16ResidualBits<>+24(SB)/4, $0x807f807f
DATA bf16ResidualBits<>+28(SB)/4, $0x807f807f
GLOBL bf16ResidualBits<>(SB), RODATA|NOPTR, $32

// low byte of each word
DATA bf16LowBytes<>+0(SB)/4, $0x00ff00ff
DATA bf16LowBytes<>+4(SB)/4, $0x00ff00ff
DATA bf16LowBytes<>+8(SB)/4, $0x00ff00ff
DATA bf16LowBytes<>+12(SB)/4, $0x00ff00ff
DATA bf16LowBytes<>+16(SB)/4, $0x00ff00ff
DATA bf16LowBytes<>+20(SB)/4, $0x00ff00ff
DATA bf16LowBytes<>+24(SB)/4, $0x00ff00ff
DATA bf16LowBytes<>+28(SB)/4, $0x00ff00ff
GLOBL bf16LowBytes<>(SB), RODATA|NOPTR, $32

// vpmaddubsw weights (1, 16): code pair c0 | c1<<4
DATA bf16NibblePairs<>+0(SB)/4, $0x10011001
DATA bf16NibblePairs<>+4(SB)/4, $0x10011001
DATA bf16NibblePairs<>+8(SB)/4, $0x10011001
DATA bf16NibblePairs<>+12(SB)/4, $0x10011001
DATA bf16NibblePairs<>+16(SB)/4, $0x10011001
DATA bf16NibblePairs<>+20(SB)/4, $0x10011001
DATA bf16NibblePairs<>+24(SB)/4, $0x10011001
DATA bf16NibblePairs<>+28(SB)/4, $0x10011001
GLOBL bf16NibblePairs<>(SB), RODATA|NOPTR, $32

// func encodeBF16AVX2(src, codes, res *byte, steps int, lut *encLUT, pf uintptr) (done, mask int)
//
// One step: 64 bf16 values, elements 0-15 in Y0, 16-31 in Y1, 32-47 in Y2, 48-63 in Y3.
// Residual word = (x & 0x807F) summed bytewise by vpmaddubsw(·, 1): mantissa + sign<<7, at most 255.
// Exponent word = (x >> 7) & 0xFF. Packing words to bytes with vpackuswb interleaves the 128-bit lanes: the
// bytes of Y0, Y1 come out as elements [0-7, 16-23 | 8-15, 24-31]. The residuals are put back in order with
// vpermq; the exponents are looked up in that order and the codes reordered once nibble-packed.
// Look-up: acc |= pshufb(lut[s], x & 15) & (x>>4 == hi[s]) over the slots s; acc is code+1, 0 for an escape.
// Each step also prefetches the two lines at pf and moves pf on by 128 bytes.
TEXT ·encodeBF16AVX2(SB), NOSPLIT, $0-64
	MOVQ src+0(FP), SI
	MOVQ codes+8(FP), DI
	MOVQ res+16(FP), DX
	MOVQ steps+24(FP), CX
	MOVQ lut+32(FP), R8
	MOVQ pf+40(FP), BX
	MOVQ 272(R8), R9 // slots in use
	XORQ AX, AX      // steps done
	XORQ R13, R13    // escape mask of the last step

	MOVL         $0x01010101, R10
	VMOVD        R10, X14
	VPBROADCASTD X14, Y14 // bytes 1
	MOVL         $0x0F0F0F0F, R10
	VMOVD        R10, X15
	VPBROADCASTD X15, Y15 // low nibble of each byte

	// The first two slots stay in registers: Y9/Y8 high nibble and table of slot 0, Y7/Y6 of slot 1.
	VPBROADCASTB   256(R8), Y9
	VBROADCASTI128 (R8), Y8
	VPBROADCASTB   257(R8), Y7
	VBROADCASTI128 16(R8), Y6

	TESTQ CX, CX
	JZ    done

loop:
	PREFETCHT0 (BX)
	PREFETCHT0 64(BX)
	ADDQ       $128, BX
	VMOVDQU    (SI), Y0
	VMOVDQU 32(SI), Y1
	VMOVDQU 64(SI), Y2
	VMOVDQU 96(SI), Y3

	// Residuals.
	VPAND      bf16ResidualBits<>(SB), Y0, Y4
	VPAND      bf16ResidualBits<>(SB), Y1, Y5
	VPAND      bf16ResidualBits<>(SB), Y2, Y10
	VPAND      bf16ResidualBits<>(SB), Y3, Y11
	VPMADDUBSW Y14, Y4, Y4
	VPMADDUBSW Y14, Y5, Y5
	VPMADDUBSW Y14, Y10, Y10
	VPMADDUBSW Y14, Y11, Y11
	VPACKUSWB  Y5, Y4, Y4
	VPACKUSWB  Y11, Y10, Y10
	VPERMQ     $0xD8, Y4, Y4
	VPERMQ     $0xD8, Y10, Y10
	VMOVDQU    Y4, (DX)
	VMOVDQU    Y10, 32(DX)

	// Exponents: Y1, Y3 their high nibbles, Y0, Y2 their low nibbles.
	VPSRLW    $7, Y0, Y0
	VPSRLW    $7, Y1, Y1
	VPSRLW    $7, Y2, Y2
	VPSRLW    $7, Y3, Y3
	VPAND     bf16LowBytes<>(SB), Y0, Y0
	VPAND     bf16LowBytes<>(SB), Y1, Y1
	VPAND     bf16LowBytes<>(SB), Y2, Y2
	VPAND     bf16LowBytes<>(SB), Y3, Y3
	VPACKUSWB Y1, Y0, Y0
	VPACKUSWB Y3, Y2, Y2
	VPSRLW    $4, Y0, Y1
	VPSRLW    $4, Y2, Y3
	VPAND     Y15, Y1, Y1
	VPAND     Y15, Y3, Y3
	VPAND     Y15, Y0, Y0
	VPAND     Y15, Y2, Y2

	// Look-up into Y4 (elements 0-31) and Y5 (32-63), slots 0 and 1 (an unused slot's table is all 0).
	VPCMPEQB Y9, Y1, Y4
	VPCMPEQB Y9, Y3, Y5
	VPSHUFB  Y0, Y8, Y10
	VPSHUFB  Y2, Y8, Y11
	VPAND    Y10, Y4, Y4
	VPAND    Y11, Y5, Y5
	VPCMPEQB Y7, Y1, Y10
	VPCMPEQB Y7, Y3, Y11
	VPSHUFB  Y0, Y6, Y12
	VPSHUFB  Y2, Y6, Y13
	VPAND    Y12, Y10, Y10
	VPAND    Y13, Y11, Y11
	VPOR     Y10, Y4, Y4
	VPOR     Y11, Y5, Y5
	CMPQ     R9, $2
	JBE      looked

	// Slots 2 and up, from memory.
	LEAQ 32(R8), R10
	LEAQ 258(R8), R11
	LEAQ -2(R9), R12

slots:
	VPBROADCASTB   (R11), Y12
	VBROADCASTI128 (R10), Y13
	VPCMPEQB       Y12, Y1, Y10
	VPCMPEQB       Y12, Y3, Y11
	VPSHUFB        Y0, Y13, Y12
	VPSHUFB        Y2, Y13, Y13
	VPAND          Y12, Y10, Y10
	VPAND          Y13, Y11, Y11
	VPOR           Y10, Y4, Y4
	VPOR           Y11, Y5, Y5
	ADDQ           $16, R10
	INCQ           R11
	DECQ           R12
	JNZ            slots

looked:
	VPMINUB    Y5, Y4, Y0  // 0 where an element escapes
	VPXOR      Y1, Y1, Y1
	VPCMPEQB   Y1, Y0, Y0
	VPMOVMSKB  Y0, R13
	VPSUBUSB   Y14, Y4, Y4 // codes, 0 for an escape
	VPSUBUSB   Y14, Y5, Y5
	VPMADDUBSW bf16NibblePairs<>(SB), Y4, Y4 // code pairs, words
	VPMADDUBSW bf16NibblePairs<>(SB), Y5, Y5
	VPACKUSWB  Y5, Y4, Y4                    // dwords: [0-7, 16-23, 32-39, 48-55 | 8-15, 24-31, 40-47, 56-63]
	VMOVDQU    bf16CodeOrder<>(SB), Y10
	VPERMD     Y4, Y10, Y4
	VMOVDQU    Y4, (DI)

	ADDQ  $128, SI
	ADDQ  $64, DX
	ADDQ  $32, DI
	INCQ  AX
	TESTL R13, R13
	JNZ   done
	CMPQ  AX, CX
	JB    loop

done:
	MOVQ AX, done+48(FP)
	MOVQ R13, mask+56(FP)
	VZEROUPPER
	RET

// func decodeBF16AVX2(codes, res, out *byte, steps int, tab *[32]byte, pf uintptr)
//
// One step: 16 code bytes, 32 residual bytes, 64 output bytes. The code bytes' dwords (8 elements each) are
// reordered to [0-7, 16-23, 8-15, 24-31], widened to words and split into nibbles, so that each 128-bit lane
// holds the codes of the elements [0-7, 16-23 | 8-15, 24-31], one per byte; the residuals are reordered the same
// way with vpermq. Low byte = (exp&1)<<7 | mantissa, high byte = sign | exp>>1; vpunpcklbw/vpunpckhbw then give
// elements 0-15 and 16-31 in order. Each step also prefetches the line at pf for writing (PREFETCHW, which the
// Go assembler lacks: 0F 0D /1 with ModRM 0x0B for (BX)) and moves pf on by 64 bytes.
TEXT ·decodeBF16AVX2(SB), NOSPLIT, $0-48
	MOVQ codes+0(FP), SI
	MOVQ res+8(FP), DX
	MOVQ out+16(FP), DI
	MOVQ steps+24(FP), CX
	MOVQ tab+32(FP), R8
	MOVQ pf+40(FP), BX

	// The constants go through VMOVD, not MOVQ: MOVQ R, X is a legacy-SSE instruction, and one of those after
	// the 256-bit VBROADCASTI128s cost about 250 ns a call on this project's 2-core AMD EPYC VM. A paged
	// decode calls this kernel several times per 8 KiB chunk (once per stretch of a 6 KiB block): in cache it ran
	// at 5.6 GB/s with MOVQ, 11.7 with VMOVD (BenchmarkPagedKV's cold 4K decode: 3.4-3.9 -> 3.9-4.3 GB/s).
	VBROADCASTI128 (R8), Y15   // high byte of the exponent field
	VBROADCASTI128 16(R8), Y14 // low byte of the exponent field
	MOVL           $0x0F0F0F0F, R10
	VMOVD          R10, X13
	VPBROADCASTD   X13, Y13
	MOVL           $0x7F7F7F7F, R10
	VMOVD          R10, X12
	VPBROADCASTD   X12, Y12
	MOVL           $0x80808080, R10
	VMOVD          R10, X11
	VPBROADCASTD   X11, Y11

	TESTQ CX, CX
	JZ    ddone

dloop:
	BYTE      $0x0F; BYTE $0x0D; BYTE $0x0B // PREFETCHW (BX)
	ADDQ      $64, BX
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
