//go:build amd64 && gc && !noasm

#include "go_asm.h"
#include "textflag.h"

// The entropy coder in AVX2, for CPUs without the AVX-512 of entropy_amd64.s: the decoder's fast steps, the lane
// encoder's two phases, and bf16's split and join. Each does what its AVX-512 twin does, with the same state.
//
// The decoder: 32 lanes, each a 16-bit buffer with its unread bits at the top and a count of them; here in
// 32-bit words, 8 lanes (a group) a register.
//
// Registers: Y0-Y3 the buffers of lanes 0-7, 8-15, 16-23, 24-31, Y4-Y7 their counts; Y8 words of 8; Y9-Y11
// and Y15 a step's look-ups (groups 0-3), and in a step with an ESC (its look-ups then in the frame) Y10 words
// of eb and Y11 of 0xFFFF; Y12-Y14 scratch (Y14 also the step's flags). R10 the look-up table (tab.ent:
// exponent | length-and-flags << 8), R14 expandIdx, SI the stream, DI the exponents out, R8 steps done, R9
// escapes. Frame (hardware SP): 0-127 an ESC step's look-ups, a group's at 32·g; 128 16 − eb and 144 eb, as
// 64-bit shift counts.

// BCASTB, BCASTW, BCASTD and BCASTQ fill Y with the constant V in every byte, word, dword or qword (X is Y's
// low half; they clobber AX).
#define BCASTB(V, X, Y) \
	MOVL         $V, AX \
	VMOVD        AX, X \
	VPBROADCASTB X, Y

#define BCASTW(V, X, Y) \
	MOVL         $V, AX \
	VMOVD        AX, X \
	VPBROADCASTW X, Y

#define BCASTD(V, X, Y) \
	MOVL         $V, AX \
	VMOVD        AX, X \
	VPBROADCASTD X, Y

#define BCASTQ(V, X, Y) \
	MOVQ         $V, AX \
	VMOVQ        AX, X \
	VPBROADCASTQ X, Y

// REFILL gives the lanes of a group in MASK (all-ones words) the next stream bytes, in lane order (a warp's
// ballot and popc): the 8 bytes at SI widened to words and permuted so that lane j gets byte
// popcount(mask below j), shifted under its unread bits. Clobbers AX, R13, T1, T2.
#define REFILL(BUF, AVAIL, MASK, T1, T2) \
	VMOVMSKPS MASK, AX \
	VPMOVZXBD (SI), T1 \
	MOVQ      AX, R13 \
	SHLQ      $5, R13 \
	VMOVDQU   (R14)(R13*1), T2 \
	VPERMD    T1, T2, T1 \
	VPSUBD    AVAIL, Y8, T2 \
	VPSLLVD   T2, T1, T1 \
	VPAND     MASK, T1, T1 \
	VPOR      T1, BUF, BUF \
	VPAND     Y8, MASK, T1 \
	VPADDD    T1, AVAIL, AVAIL \
	POPCNTL   AX, AX \
	ADDQ      AX, SI

// CONSUME drops the looked-up codes of group G, in its frame slot, from its buffers.
#define CONSUME(G, BUF, AVAIL) \
	VMOVDQU (32*G)(SP), Y12 \
	CONSUMER(BUF, AVAIL, Y12)

// LOOKUPR is round 1 for a group: lanes with fewer than 8 bits take a byte, then their top 8 bits are looked
// up (gathered) into E. A step keeps its look-ups in Y9-Y11 and Y15, so that consuming them does not wait for a
// store to forward; a step with an ESC moves them to the frame.
#define LOOKUPR(BUF, AVAIL, E) \
	VPCMPGTD   AVAIL, Y8, Y14 \
	REFILL(BUF, AVAIL, Y14, Y12, Y13) \
	VPSRLD     $8, BUF, Y12 \
	VPCMPEQD   Y13, Y13, Y13 \
	VPXOR      E, E, E \
	VPGATHERDD Y13, (R10)(Y12*4), E

// CONSUMER drops the codes looked up in E from a group's buffers.
#define CONSUMER(BUF, AVAIL, E) \
	VPSRLD  $8, E, Y13 \
	VPAND   ·dwords0F(SB), Y13, Y13 \
	VPSLLVD Y13, BUF, BUF \
	VPAND   ·dwordsFFFF(SB), BUF, BUF \
	VPSUBD  Y13, AVAIL, AVAIL

// ROUND2 is round 2 for group G: its ESC lanes with fewer than eb bits take a byte, then read eb raw bits,
// which replace the looked-up exponent in slot G.
#define ROUND2(G, BUF, AVAIL) \
	VMOVDQU   (32*G)(SP), Y12 \
	VPSLLD    $19, Y12, Y13 \
	VPSRAD    $31, Y13, Y13 \
	VPCMPGTD  AVAIL, Y10, Y14 \
	VPAND     Y13, Y14, Y14 \
	REFILL(BUF, AVAIL, Y14, Y12, Y15) \
	VPSRLD    128(SP), BUF, Y12 \
	VMOVDQU   (32*G)(SP), Y15 \
	VPBLENDVB Y13, Y12, Y15, Y15 \
	VMOVDQU   Y15, (32*G)(SP) \
	VPSLLD    144(SP), BUF, Y12 \
	VPAND     Y11, Y12, Y12 \
	VPBLENDVB Y13, Y12, BUF, BUF \
	VPAND     Y10, Y13, Y12 \
	VPSUBD    Y12, AVAIL, AVAIL \
	VMOVMSKPS Y13, AX \
	POPCNTL   AX, AX \
	ADDQ      AX, R9

// PREFETCHW (AX), which the assembler does not know: the line is fetched to be written.
#define PREFETCHWAX BYTE $0x0F; BYTE $0x0D; BYTE $0x08

// STEPAT sets AX to BASE + R8 << SHIFT: where step R8 prefetches in a region it covers 2^SHIFT bytes a step of.
#define STEPAT(SHIFT, BASE) \
	MOVQ R8, AX \
	SHLQ $SHIFT, AX \
	ADDQ BASE, AX

// DECPREFETCH prefetches, at step R8 of the decoder, the step's line of the chunk's output (for writing) and
// half a line of its residuals, so that the join after the chunk finds both in cache. Clobbers AX.
#define DECPREFETCH \
	STEPAT(6, out+48(FP)) \
	PREFETCHWAX \
	STEPAT(5, res+56(FP)) \
	PREFETCHT0 (AX)

// ENCPREFETCH prefetches, at step R8 of the lane encoder, a line of the next chunk's input and half a line of
// its residuals' place in the frame (for writing), so that the next chunk's split finds both in cache, and a
// quarter line of where this chunk's stream goes (for writing: the interleave's stores). Clobbers AX.
#define ENCPREFETCH \
	STEPAT(6, next+48(FP)) \
	PREFETCHT0 (AX) \
	STEPAT(5, nextRes+56(FP)) \
	PREFETCHWAX \
	STEPAT(4, stream+64(FP)) \
	PREFETCHWAX

// ENCGROUP codes step s's symbols of group G (lanes 8G..8G+7; B their bit counts, ACC their newest bits):
// looks up the exponents, appends the bits, records the round masks (r1 of step s+1 into R12, r2 of step s into
// R13, byte G), counts escapes (R9) and appends the words the step completes to the events (ENCBODY).
#define ENCGROUP(G, B, ACC) \
	ENCGATHER(G) \
	ENCBODY(G, B, ACC)

// ENCGATHER gathers group G's look-ups: Y13 their entries (the escape flag at bit 7), Y14 their lengths, Y15
// their bits.
#define ENCGATHER(G) \
	VPMOVZXBD  (8*G)(SI), Y11 \
	VMOVDQA    Y10, Y12 \
	VPXOR      Y13, Y13, Y13 \
	VPGATHERDD Y12, (R10)(Y11*4), Y13 \
	VPAND      Y8, Y13, Y14 \
	VPSRLD     $8, Y13, Y15

// ENCNARROW is ENCGATHER from the step's look-ups in the frame (ENCSHUFFLE): Y13 the lens bytes, Y14 the
// lengths, Y15 the low bytes of the bits, with ESC's high bits (encNarrow.hi) where the flag is set.
#define ENCNARROW(G) \
	VPMOVZXBD (8*G)(SP), Y13 \
	VPMOVZXBD (32+8*G)(SP), Y15 \
	VPSLLD    $24, Y13, Y12 \
	VPSRAD    $31, Y12, Y12 \
	VPAND     160(R10), Y12, Y12 \
	VPOR      Y12, Y15, Y15 \
	VPAND     Y8, Y13, Y14

// ENCOUTSIDE loads the step's 32 exponents e into Y11 and x = e − lo into Y12, and marks in Y13 those with
// x ≥ 16, which escape (encNarrow, R10).
#define ENCOUTSIDE \
	VMOVDQU  (SI), Y11 \
	VPSUBB   64(R10), Y11, Y12 \
	VPMAXUB  ·sixteens(SB), Y12, Y13 \
	VPCMPEQB Y12, Y13, Y13

// ENCSHUFFLE looks the step's 32 exponents up in encNarrow (R10) with VPSHUFB: x = e − lo, and every
// exponent with x ≥ 16 escapes. The lens bytes go to 0 in the frame (Y14 keeps them), the bits' low bytes to
// 32 (those of the escapes from ENCSHUFFLEESC).
#define ENCSHUFFLE \
	ENCOUTSIDE \
	VMOVDQU   0(R10), Y14 \
	VPSHUFB   Y12, Y14, Y14 \
	VPBLENDVB Y13, 96(R10), Y14, Y14 \
	VMOVDQU   Y14, 0(SP) \
	VMOVDQU   32(R10), Y15 \
	VPSHUFB   Y12, Y15, Y15 \
	VMOVDQU   Y15, 32(SP)

// ENCSHUFFLEESC puts the escapes' bits into ENCSHUFFLE's low bytes: the exponent, and ESC's code's low bits
// above it (only steps with an escape need them).
#define ENCSHUFFLEESC \
	ENCOUTSIDE \
	VPOR      128(R10), Y11, Y11 \
	VMOVDQU   32(SP), Y15 \
	VPBLENDVB Y13, Y11, Y15, Y15 \
	VMOVDQU   Y15, 32(SP)

// ENCBODY codes group G's looked-up symbols (ENCGATHER's or ENCNARROW's registers): ENCBITS, ENCR2, ENCESC
// and ENCWORDS.
#define ENCBODY(G, B, ACC) \
	ENCBITS(G, B, ACC) \
	ENCR2(G) \
	ENCESC \
	ENCWORDS(G, B, ACC)

// ENCBITS appends group G's bits (lengths Y14, bits Y15) and records its lanes of round 1 of the next step
// (R12, byte G). It leaves w1 in Y11, y in Y12 and the lengths in Y14 (encodeStepsAVX2).
#define ENCBITS(G, B, ACC) \
	VPSLLVD    Y14, ACC, ACC \
	VPOR       Y15, ACC, ACC \
	VPADDD     Y9, B, Y11 \
	VPSRLD     $3, Y11, Y11 \
	VPADDD     Y14, B, B \
	VPADDD     Y9, B, Y12 \
	VPSRLD     $3, Y12, Y12 \
	VPCMPGTD   Y11, Y12, Y15 \
	VMOVMSKPS  Y15, AX \
	SHLL       $(8*G), AX \
	ORL        AX, R12

// ENCR2 records group G's lanes of round 2 (R13, byte G): those that escape (the flag, bit 7 of Y13) with
// y − 1 > w1. It leaves the flags in Y15's sign bits.
#define ENCR2(G) \
	VPADDD     Y10, Y12, Y12 \
	VPCMPGTD   Y11, Y12, Y12 \
	VPSLLD     $24, Y13, Y15 \
	VPAND      Y15, Y12, Y12 \
	VMOVMSKPS  Y12, AX \
	SHLL       $(8*G), AX \
	ORL        AX, R13

// ENCESC counts the group's escapes (ENCR2's flags) into R9.
#define ENCESC \
	VMOVMSKPS  Y15, AX \
	POPCNTL    AX, AX \
	ADDQ       AX, R9

// ENCWORDS appends the words group G's step completes to the events at DX: the lanes whose B passes a
// multiple of 16 (the word B0 falls in: a step adds at most 16 bits, so these are the lanes whose length
// exceeds B & 15), each as its offset in the lanes' bytes << 16 | the word, big-endian, compressed to the
// front by a VPERMD from compressIdx (R14). AVX2 has no scatter, and a step completes about 6 words where
// storing every lane's current word (as the Go coder does) takes 32 stores. ENCEVENTS writes them.
#define ENCWORDS(G, B, ACC) \
	VPAND      Y9, B, Y13 \
	VPCMPGTD   Y13, Y14, Y15 \
	VPSRLVD    Y13, ACC, Y14 \
	VPSRLD     $4, B, Y12 \
	VPSLLD     $17, Y12, Y12 \
	VPADDD     ·laneWords16+(32*G)(SB), Y12, Y12 \
	VPSHUFB    ·bswap16d(SB), Y14, Y14 \
	VPOR       Y12, Y14, Y14 \
	VMOVMSKPS  Y15, AX \
	MOVQ       AX, R11 \
	SHLQ       $5, AX \
	VMOVDQU    (R14)(AX*1), Y13 \
	VPERMD     Y14, Y13, Y14 \
	VMOVDQU    Y14, (DX) \
	POPCNTL    R11, R11 \
	LEAQ       (DX)(R11*4), DX

// ENCESCAPES codes group G of a step with an escape from ENCSHUFFLE's look-ups (the step's count is added
// once, from its flags).
#define ENCESCAPES(G, B, ACC) \
	ENCNARROW(G) \
	ENCBITS(G, B, ACC) \
	ENCR2(G) \
	ENCWORDS(G, B, ACC)

// ENCPLAIN codes group G of a step without escapes from ENCSHUFFLE's look-ups: every lens byte is a length.
#define ENCPLAIN(G, B, ACC) \
	VPMOVZXBD (8*G)(SP), Y14 \
	VPMOVZXBD (32+8*G)(SP), Y15 \
	ENCBITS(G, B, ACC) \
	ENCWORDS(G, B, ACC)

// ENCEVENTS stores the words of the events from ev (FP) up to DX into the lanes' bytes (DI), two at a time
// (ev has room for one more).
#define ENCEVENTS \
	MOVQ  ev+40(FP), R11 \
	MOVL  $16, CX \
encevents: \
	CMPQ  R11, DX \
	JAE   eneventsdone \
	MOVL  (R11), AX \
	MOVL  4(R11), R13 \
	SHRXL CX, AX, R12 \
	MOVW  AX, (DI)(R12*1) \
	SHRXL CX, R13, R12 \
	MOVW  R13, (DI)(R12*1) \
	ADDQ  $8, R11 \
	JMP  encevents \
eneventsdone:

// ENCEVENTSPAD repeats the last event, if any, past the others: ENCEVENTS then writes its word twice rather
// than a word from whatever follows an odd count.
#define ENCEVENTSPAD \
	CMPQ DX, ev+40(FP) \
	JE   encpadded \
	MOVL -4(DX), AX \
	MOVL AX, (DX) \
encpadded:

// ENCSTART loads the lane encoder's arguments but its table (R10) and its state, and sets its constants.
#define ENCSTART \
	MOVQ     exps+0(FP), SI \
	MOVQ     steps+8(FP), CX \
	MOVQ     st+24(FP), BX \
	MOVQ     bytes+32(FP), DI \
	XORQ     R8, R8 \
	XORQ     R9, R9 \
	MOVQ     ev+40(FP), DX \
	LEAQ     ·compressIdx(SB), R14 \
	BCASTD(31, X8, Y8) \
	BCASTD(15, X9, Y9) \
	VPCMPEQD Y10, Y10, Y10 \
	VMOVDQU  0(BX), Y0 \
	VMOVDQU  32(BX), Y1 \
	VMOVDQU  64(BX), Y2 \
	VMOVDQU  96(BX), Y3 \
	VMOVDQU  128(BX), Y4 \
	VMOVDQU  160(BX), Y5 \
	VMOVDQU  192(BX), Y6 \
	VMOVDQU  224(BX), Y7

// ENCFINISH saves the lane encoder's state, returns its escapes (R9) and stores the completed words.
#define ENCFINISH \
	VMOVDQU Y0, 0(BX) \
	VMOVDQU Y1, 32(BX) \
	VMOVDQU Y2, 64(BX) \
	VMOVDQU Y3, 96(BX) \
	VMOVDQU Y4, 128(BX) \
	VMOVDQU Y5, 160(BX) \
	VMOVDQU Y6, 192(BX) \
	VMOVDQU Y7, 224(BX) \
	MOVQ    R9, escapes+72(FP) \
	ENCEVENTSPAD \
	ENCEVENTS \
	VZEROUPPER \
	RET

// func decodeLanesAVX2(stream *byte, n, steps int, tab *simdTab, st *[64]uint16, exps *byte) (done, pos, escapes int)
//
// A step looks up all four groups before it consumes a code, so that a step with a prefix no code starts stops
// with every lane holding at least 8 bits: the Go path then takes no byte in that step and reports the lane.
TEXT ·decodeLanesAVX2(SB), NOSPLIT, $160-88
	MOVQ stream+0(FP), SI
	MOVQ n+8(FP), DX
	MOVQ steps+16(FP), CX
	MOVQ tab+24(FP), R10
	MOVQ st+32(FP), BX
	MOVQ exps+40(FP), DI
	MOVQ SI, R11 // the stream's start
	SUBQ $64, DX // a step may start while pos ≤ n − 64
	XORQ R8, R8
	XORQ R9, R9
	LEAQ ·expandIdx(SB), R14

	MOVQ         512(R10), AX // eb
	MOVQ         AX, 144(SP)
	MOVQ         $0, 152(SP)
	MOVQ         $16, R13
	SUBQ         AX, R13
	MOVQ         R13, 128(SP)
	MOVQ         $0, 136(SP)
	ADDQ         $520, R10    // tab.ent
	BCASTD(8, X8, Y8)
	VPMOVZXWD    0(BX), Y0
	VPMOVZXWD    16(BX), Y1
	VPMOVZXWD    32(BX), Y2
	VPMOVZXWD    48(BX), Y3
	VPMOVZXWD    64(BX), Y4
	VPMOVZXWD    80(BX), Y5
	VPMOVZXWD    96(BX), Y6
	VPMOVZXWD    112(BX), Y7

loop:
	CMPQ  R8, CX
	JGE   done
	MOVQ  SI, AX
	SUBQ  R11, AX
	CMPQ  AX, DX
	JGT   done
	LOOKUPR(Y0, Y4, Y9)
	LOOKUPR(Y1, Y5, Y10)
	LOOKUPR(Y2, Y6, Y11)
	LOOKUPR(Y3, Y7, Y15)
	VPOR   Y9, Y10, Y12
	VPOR   Y11, Y15, Y13
	VPOR   Y12, Y13, Y14 // the step's flags
	VPSRLD $12, Y14, Y12 // ESC or no code in any lane
	VPTEST Y12, Y12
	JNZ    special
	CONSUMER(Y0, Y4, Y9)
	CONSUMER(Y1, Y5, Y10)
	CONSUMER(Y2, Y6, Y11)
	CONSUMER(Y3, Y7, Y15)
	// The step's 32 exponents: the entries' low bytes, packed (per 128-bit half) and put back in lane order.
	VMOVDQU   ·dwordsFF(SB), Y14
	VPAND     Y14, Y9, Y12
	VPAND     Y14, Y10, Y13
	VPACKUSDW Y13, Y12, Y12
	VPAND     Y14, Y11, Y13
	VPAND     Y14, Y15, Y14
	VPACKUSDW Y14, Y13, Y13

packed:
	// Groups 0-1 packed to words in Y12, groups 2-3 in Y13: to bytes, in lane order, stored.
	VPACKUSWB Y13, Y12, Y12
	VMOVDQU   ·packOrder(SB), Y13
	VPERMD    Y12, Y13, Y12
	VMOVDQU   Y12, (DI)
	ADDQ      $32, DI
	DECPREFETCH
	INCQ      R8
	JMP       loop

store:
	// As above, from the frame's slots (the ESC path's).
	VPSRLD    $8, Y11, Y15 // words of 0xFF
	VPAND     0(SP), Y15, Y12
	VPAND     32(SP), Y15, Y13
	VPACKUSDW Y13, Y12, Y12
	VPAND     64(SP), Y15, Y13
	VPAND     96(SP), Y15, Y14
	VPACKUSDW Y14, Y13, Y13
	JMP       packed

special:
	// The entries to the frame's slots, and the constants ROUND2 uses.
	VMOVDQU      Y9, 0(SP)
	VMOVDQU      Y10, 32(SP)
	VMOVDQU      Y11, 64(SP)
	VMOVDQU      Y15, 96(SP)
	VPBROADCASTD 144(SP), Y10
	VMOVDQU      ·dwordsFFFF(SB), Y11
	VPSRLD       $13, Y14, Y12 // a prefix no code starts: stop before consuming
	VPTEST       Y12, Y12
	JNZ          done
	CONSUME(0, Y0, Y4)
	CONSUME(1, Y1, Y5)
	CONSUME(2, Y2, Y6)
	CONSUME(3, Y3, Y7)
	ROUND2(0, Y0, Y4)
	ROUND2(1, Y1, Y5)
	ROUND2(2, Y2, Y6)
	ROUND2(3, Y3, Y7)
	JMP          store

done:
	VPACKUSDW Y1, Y0, Y12
	VPERMQ    $0xD8, Y12, Y12
	VMOVDQU   Y12, 0(BX)
	VPACKUSDW Y3, Y2, Y12
	VPERMQ    $0xD8, Y12, Y12
	VMOVDQU   Y12, 32(BX)
	VPACKUSDW Y5, Y4, Y12
	VPERMQ    $0xD8, Y12, Y12
	VMOVDQU   Y12, 64(BX)
	VPACKUSDW Y7, Y6, Y12
	VPERMQ    $0xD8, Y12, Y12
	VMOVDQU   Y12, 96(BX)
	SUBQ      R11, SI
	MOVQ      R8, done+64(FP)
	MOVQ      SI, pos+72(FP)
	MOVQ      R9, escapes+80(FP)
	VZEROUPPER
	RET

// func joinBF16AVX2(exps, res, out *byte, n int)
//
// Joins n bf16 elements (a multiple of 32) from their exponents and residuals (sign<<7 | mantissa), a byte
// each, 64 output bytes a step: an element's high byte is sign | exponent>>1 and its low byte the exponent's
// low bit | mantissa, made 32 at a time (word shifts move each exponent's bits into the right bytes, a mask
// keeps them) and then interleaved. The quadwords of both inputs are reordered first (0, 2, 1, 3), so that
// the in-lane interleaves give elements 0-15 and 16-31 in order.
TEXT ·joinBF16AVX2(SB), NOSPLIT, $0-32
	MOVQ         exps+0(FP), SI
	MOVQ         res+8(FP), BX
	MOVQ         out+16(FP), DI
	MOVQ         n+24(FP), CX
	BCASTB(0x7F, X1, Y1)
	BCASTB(0x80, X2, Y2)

join:
	CMPQ       CX, $32
	JLT        joined
	VPERMQ     $0xD8, (SI), Y3
	VPERMQ     $0xD8, (BX), Y4
	VPSRLW     $1, Y3, Y5
	VPAND      Y1, Y5, Y5
	VPAND      Y2, Y4, Y6
	VPOR       Y6, Y5, Y5  // high bytes
	VPSLLW     $7, Y3, Y3
	VPXOR      Y4, Y3, Y3
	VPAND      Y2, Y3, Y3
	VPXOR      Y4, Y3, Y3  // low bytes: the mantissa, the exponent's low bit in bit 7
	VPUNPCKLBW Y5, Y3, Y6
	VPUNPCKHBW Y5, Y3, Y3
	VMOVDQU    Y6, (DI)
	VMOVDQU    Y3, 32(DI)
	ADDQ       $32, SI
	ADDQ       $32, BX
	ADDQ       $64, DI
	SUBQ       $32, CX
	JMP        join

joined:
	VZEROUPPER
	RET

// func encodeStepsAVX2(exps *byte, steps int, lut *[256]uint32, st *encSIMD, bytes *byte, ev *uint32) (escapes int)
//
// encodeStepsAVX512 in AVX2, from the encoder's 32-bit look-up table (entEnc.lut: bits << 8 | escape << 7 |
// length) gathered 8 lanes at a time: each step's lanes append their symbols' bits to 32-bit accumulators, the
// round masks are recorded (with y = (B1+15)>>3 and w1 = (B0+15)>>3: round 1 of the next step when y > w1,
// round 2 for an escape when y − 1 > w1), and the words the steps complete are listed in ev and then stored
// (ENCBODY, ENCEVENTS). ev needs room for one event a lane a step, and 8 more.
//
// Registers: Y0-Y3 the lanes' bit counts, Y4-Y7 their accumulators, Y8 words of 31, Y9 of 15, Y10 of −1;
// Y11-Y15 scratch; DX the next event, R14 compressIdx.
TEXT ·encodeStepsAVX2(SB), NOSPLIT, $0-80
	MOVQ lut+16(FP), R10
	ENCSTART

encloop:
	CMPQ R8, CX
	JGE  encdone
	XORL R12, R12
	XORL R13, R13
	ENCGROUP(0, Y0, Y4)
	ENCGROUP(1, Y1, Y5)
	ENCGROUP(2, Y2, Y6)
	ENCGROUP(3, Y3, Y7)
	MOVL R12, (256+4)(BX)(R8*4)                   // r1[s+1]
	MOVL R13, (256+4*(const_maxSteps+1))(BX)(R8*4) // r2[s]
	ENCPREFETCH
	ADDQ $32, SI
	INCQ R8
	JMP  encloop

encdone:
	ENCFINISH

// func encodeStepsNarrowAVX2(exps *byte, steps int, nt *encNarrow, st *encSIMD, bytes *byte, ev *uint32) (escapes int)
//
// encodeStepsAVX2 with a step's look-ups made by two byte shuffles from nt's 16-entry tables (ENCSHUFFLE)
// instead of four gathers, and the escapes' work (ESC's high bits, round 2, the count) done only in steps
// with one. Frame: the step's lens bytes at 0 and the low bytes of its bits at 32.
TEXT ·encodeStepsNarrowAVX2(SB), NOSPLIT, $64-80
	MOVQ nt+16(FP), R10
	ENCSTART

nencloop:
	CMPQ R8, CX
	JGE  nencdone
	XORL R12, R12
	XORL R13, R13
	ENCSHUFFLE
	VPMOVMSKB Y14, AX // the step's escapes
	TESTL     AX, AX
	JNZ       nescapes
	ENCPLAIN(0, Y0, Y4)
	ENCPLAIN(1, Y1, Y5)
	ENCPLAIN(2, Y2, Y6)
	ENCPLAIN(3, Y3, Y7)
	JMP  nstepped

nescapes:
	POPCNTL AX, AX
	ADDQ    AX, R9
	ENCSHUFFLEESC
	ENCESCAPES(0, Y0, Y4)
	ENCESCAPES(1, Y1, Y5)
	ENCESCAPES(2, Y2, Y6)
	ENCESCAPES(3, Y3, Y7)

nstepped:
	MOVL R12, (256+4)(BX)(R8*4)                   // r1[s+1]
	MOVL R13, (256+4*(const_maxSteps+1))(BX)(R8*4) // r2[s]
	ENCPREFETCH
	ADDQ $32, SI
	INCQ R8
	JMP  nencloop

nencdone:
	ENCFINISH

// func splitBF16AVX2(src, exps, res *byte, n int)
//
// Splits n bf16 elements (a multiple of 32) into their exponents and residuals (sign<<7 | mantissa), a byte
// each: splitBF16AVX512 in AVX2, 32 elements a step (the word-to-byte packs work per 128-bit half, so each
// ends with a VPERMQ).
TEXT ·splitBF16AVX2(SB), NOSPLIT, $0-32
	MOVQ         src+0(FP), SI
	MOVQ         exps+8(FP), DI
	MOVQ         res+16(FP), BX
	MOVQ         n+24(FP), CX
	BCASTW(0x7F, X1, Y1)
	BCASTW(0x80, X2, Y2)
	BCASTW(0xFF, X0, Y0)

split:
	CMPQ      CX, $32
	JLT       splitted
	VMOVDQU   (SI), Y3
	VMOVDQU   32(SI), Y6
	VPSRLW    $7, Y3, Y4
	VPAND     Y0, Y4, Y4 // exponent
	VPSRLW    $7, Y6, Y7
	VPAND     Y0, Y7, Y7
	VPACKUSWB Y7, Y4, Y4
	VPERMQ    $0xD8, Y4, Y4
	VMOVDQU   Y4, (DI)
	VPSRLW    $8, Y3, Y5
	VPAND     Y2, Y5, Y5 // sign at bit 7
	VPAND     Y1, Y3, Y3 // mantissa
	VPOR      Y5, Y3, Y3
	VPSRLW    $8, Y6, Y5
	VPAND     Y2, Y5, Y5
	VPAND     Y1, Y6, Y6
	VPOR      Y5, Y6, Y6
	VPACKUSWB Y6, Y3, Y3
	VPERMQ    $0xD8, Y3, Y3
	VMOVDQU   Y3, (BX)
	ADDQ      $64, SI
	ADDQ      $32, DI
	ADDQ      $32, BX
	SUBQ      $32, CX
	JMP       split

splitted:
	VZEROUPPER
	RET

// IROUND1 takes, in lane order, the next byte of each lane of group G in the round's mask (byte G of the
// step's uint32 at MASKS + 4·R8): the low bytes of the group's windows (W, one dword a lane, its next four
// bytes in order) gathered into a qword, compressed by the mask with VPSHUFB (compress8, R14) and stored at
// BX + DX; DX advances by the count, and the lanes that took one shift their window by a byte and advance
// their count (RC, in bits) by 8: laneShift8[mask] (R10).
#define IROUND1(G, MASKS, RC, W) \
	VPSHUFB Y8, W, Y12 \
	VPERMD  Y12, Y9, Y12 \
	MOVBLZX G(MASKS)(R8*4), AX \
	POPCNTL AX, R13 \
	SHLQ    $4, AX \
	VPSHUFB (R14)(AX*1), X12, X12 \
	VMOVQ   X12, (BX)(DX*1) \
	ADDQ    R13, DX \
	VMOVDQU (R10)(AX*2), Y13 \
	VPSRLVD Y13, W, W \
	VPADDD  Y13, RC, RC

// IROUND takes one round's bytes (masks at MASKS + 4·R8) from all four groups.
#define IROUND(MASKS) \
	IROUND1(0, MASKS, Y0, Y4) \
	IROUND1(1, MASKS, Y1, Y5) \
	IROUND1(2, MASKS, Y2, Y6) \
	IROUND1(3, MASKS, Y3, Y7)

// IGATHER1 loads the next four bytes of each lane of group G (bytes + laneOffsets + its count) into W.
#define IGATHER1(G, RC, W) \
	VPSRLD     $3, RC, Y12 \
	VPADDD     ·laneOffsets+(32*G)(SB), Y12, Y12 \
	VPCMPEQD   Y13, Y13, Y13 \
	VPGATHERDD Y13, (DI)(Y12*1), W

// ISTEP1 interleaves step R8's bytes when no lane takes one in round 2.
#define ISTEP1 \
	IROUND(SI) \
	INCQ R8

// ISTEP interleaves step R8's bytes: round 1 (r1[s], SI), then round 2 (r2[s], R11) when any lane takes one.
#define ISTEP \
	IROUND(SI) \
	MOVL  (R11)(R8*4), R12 \
	TESTL R12, R12 \
	JZ    2(PC) \
	CALL  ·interleaveRound2AVX2(SB) \
	INCQ  R8

// func interleaveAVX2(bytes *byte, r1, r2 *uint32, steps int, out *byte) (n int)
//
// interleaveAVX512 in AVX2 (lanes maxLaneBytes apart in bytes). Each lane's next four bytes are gathered every
// two steps (a lane takes at most two a step), or every four when no lane takes one in round 2 there (at most
// one a step: round 2 is for escapes, so this is the common case); a round's bytes are the windows' low
// bytes, compressed group by group. out must have 8 bytes to spare past the stream (the stores are 8 bytes
// wide).
//
// Registers: Y0-Y3 the lanes' bits taken (8 a byte), Y4-Y7 their windows; Y8 picks each dword's low byte
// (VPSHUFB), Y9 gathers them into the low qword (VPERMD); R14 compress8, R10 laneShift8.
TEXT ·interleaveAVX2(SB), NOSPLIT, $0-48
	MOVQ    bytes+0(FP), DI
	MOVQ    r1+8(FP), SI
	MOVQ    r2+16(FP), R11
	MOVQ    steps+24(FP), CX
	MOVQ    out+32(FP), BX
	LEAQ    ·compress8(SB), R14
	LEAQ    ·laneShift8(SB), R10
	XORQ    DX, DX // bytes written
	XORQ    R8, R8 // step
	VMOVDQU ·lowBytes(SB), Y8
	VMOVDQU ·lowBytesOrder(SB), Y9
	VPXOR   Y0, Y0, Y0
	VPXOR   Y1, Y1, Y1
	VPXOR   Y2, Y2, Y2
	VPXOR   Y3, Y3, Y3

iloop:
	CMPQ R8, CX
	JGE  idone
	IGATHER1(0, Y0, Y4)
	IGATHER1(1, Y1, Y5)
	IGATHER1(2, Y2, Y6)
	IGATHER1(3, Y3, Y7)
	LEAQ 4(R8), AX
	CMPQ AX, CX
	JGT  itwo
	MOVQ (R11)(R8*4), AX
	ORQ  8(R11)(R8*4), AX
	JNZ  itwo
	ISTEP1
	ISTEP1
	ISTEP1
	ISTEP1
	JMP  iloop

itwo:
	ISTEP
	CMPQ R8, CX
	JGE  idone
	ISTEP
	JMP  iloop

idone:
	MOVQ DX, n+40(FP)
	VZEROUPPER
	RET

// interleaveRound2AVX2 is IROUND for round 2 (r2[s], R11), out of line: few steps have one.
TEXT ·interleaveRound2AVX2(SB), NOSPLIT|NOFRAME, $0-0
	IROUND(R11)
	RET

// func splitE4M3AVX2(src, exps, res *byte, n int)
//
// splitE4M3AVX512 in AVX2, 64 elements a step (n a multiple of 64): s eeee mmm gives the exponent eeee and the
// residual nibble s mmm; a multiply-add of byte pairs by (1, 16) packs two nibbles a byte, and a pack of the
// words with a quadword reorder puts the 32 bytes in order.
TEXT ·splitE4M3AVX2(SB), NOSPLIT, $0-32
	MOVQ src+0(FP), SI
	MOVQ exps+8(FP), DI
	MOVQ res+16(FP), BX
	MOVQ n+24(FP), CX
	BCASTB(0x0F, X10, Y10)
	BCASTB(0x08, X11, Y11)
	BCASTB(0x07, X12, Y12)
	BCASTD(0x10011001, X13, Y13)

e4split:
	CMPQ       CX, $64
	JLT        e4splitdone
	VMOVDQU    (SI), Y0
	VMOVDQU    32(SI), Y1
	VPSRLW     $3, Y0, Y2
	VPAND      Y10, Y2, Y2
	VMOVDQU    Y2, (DI)
	VPSRLW     $3, Y1, Y3
	VPAND      Y10, Y3, Y3
	VMOVDQU    Y3, 32(DI)
	VPSRLW     $4, Y0, Y2
	VPAND      Y11, Y2, Y2
	VPAND      Y12, Y0, Y0
	VPOR       Y2, Y0, Y0
	VPSRLW     $4, Y1, Y3
	VPAND      Y11, Y3, Y3
	VPAND      Y12, Y1, Y1
	VPOR       Y3, Y1, Y1
	VPMADDUBSW Y13, Y0, Y0
	VPMADDUBSW Y13, Y1, Y1
	VPACKUSWB  Y1, Y0, Y0
	VPERMQ     $0xD8, Y0, Y0
	VMOVDQU    Y0, (BX)
	ADDQ       $64, SI
	ADDQ       $64, DI
	ADDQ       $32, BX
	SUBQ       $64, CX
	JMP        e4split

e4splitdone:
	VZEROUPPER
	RET

// func joinE4M3AVX2(exps, res, out *byte, n int)
//
// joinE4M3AVX512 in AVX2, 64 elements a step (n a multiple of 64): the residual bytes' low and high nibbles,
// interleaved (after a quadword reorder, so that the in-lane interleaves keep the order), are the elements'
// s mmm; s goes to bit 7 and the exponent above mmm.
TEXT ·joinE4M3AVX2(SB), NOSPLIT, $0-32
	MOVQ exps+0(FP), SI
	MOVQ res+8(FP), BX
	MOVQ out+16(FP), DI
	MOVQ n+24(FP), CX
	BCASTB(0x0F, X10, Y10)
	BCASTB(0x08, X11, Y11)
	BCASTB(0x07, X12, Y12)

e4join:
	CMPQ       CX, $64
	JLT        e4joindone
	VPERMQ     $0xD8, (BX), Y0
	VPSRLW     $4, Y0, Y1
	VPAND      Y10, Y1, Y1
	VPAND      Y10, Y0, Y0
	VPUNPCKHBW Y1, Y0, Y2 // elements 32-63
	VPUNPCKLBW Y1, Y0, Y0 // elements 0-31
	VPAND      Y11, Y0, Y3
	VPSLLW     $4, Y3, Y3
	VPAND      Y12, Y0, Y0
	VPOR       Y3, Y0, Y0
	VMOVDQU    (SI), Y3
	VPSLLW     $3, Y3, Y3
	VPOR       Y3, Y0, Y0
	VMOVDQU    Y0, (DI)
	VPAND      Y11, Y2, Y3
	VPSLLW     $4, Y3, Y3
	VPAND      Y12, Y2, Y2
	VPOR       Y3, Y2, Y2
	VMOVDQU    32(SI), Y3
	VPSLLW     $3, Y3, Y3
	VPOR       Y3, Y2, Y2
	VMOVDQU    Y2, 32(DI)
	ADDQ       $64, SI
	ADDQ       $32, BX
	ADDQ       $64, DI
	SUBQ       $64, CX
	JMP        e4join

e4joindone:
	VZEROUPPER
	RET

// func splitE5M2AVX2(src, exps, res *byte, n int)
//
// splitE5M2AVX512 in AVX2, 64 elements a step (n a multiple of 64): s eeeee mm gives the exponent eeeee and
// the residual s mm, eight of which pack into 3 bytes (field j at bit 3j): multiply-adds join pairs (by 1, 8)
// and fours (by 1, 64), a shift joins the two fours of a quadword. The halves are regrouped first so that a
// 128-bit lane's two quadwords and the other register's go to 12 consecutive bytes, shuffled and joined.
TEXT ·splitE5M2AVX2(SB), NOSPLIT, $0-32
	MOVQ src+0(FP), SI
	MOVQ exps+8(FP), DI
	MOVQ res+16(FP), BX
	MOVQ n+24(FP), CX
	BCASTB(0x1F, X10, Y10)
	BCASTB(0x04, X11, Y11)
	BCASTB(0x03, X12, Y12)
	BCASTD(0x08010801, X13, Y13)
	BCASTQ(0x0040000100400001, X14, Y14)
	BCASTQ(0x0000000000000FFF, X15, Y15)

e5split:
	CMPQ       CX, $64
	JLT        e5splitdone
	VMOVDQU    (SI), Y0
	VMOVDQU    32(SI), Y1
	VPSRLW     $2, Y0, Y2
	VPAND      Y10, Y2, Y2
	VMOVDQU    Y2, (DI)
	VPSRLW     $2, Y1, Y3
	VPAND      Y10, Y3, Y3
	VMOVDQU    Y3, 32(DI)
	VPSRLW     $5, Y0, Y2
	VPAND      Y11, Y2, Y2
	VPAND      Y12, Y0, Y0
	VPOR       Y2, Y0, Y0
	VPSRLW     $5, Y1, Y3
	VPAND      Y11, Y3, Y3
	VPAND      Y12, Y1, Y1
	VPOR       Y3, Y1, Y1
	VPERM2I128 $0x20, Y1, Y0, Y2 // elements 0-15 | 32-47
	VPERM2I128 $0x31, Y1, Y0, Y3 // elements 16-31 | 48-63
	VPMADDUBSW Y13, Y2, Y2
	VPMADDUBSW Y13, Y3, Y3
	VPMADDWD   Y14, Y2, Y2
	VPMADDWD   Y14, Y3, Y3
	VPSRLQ     $20, Y2, Y4
	VPAND      Y15, Y2, Y2
	VPOR       Y4, Y2, Y2
	VPSRLQ     $20, Y3, Y4
	VPAND      Y15, Y3, Y3
	VPOR       Y4, Y3, Y3
	VPSHUFB    ·e5PackLo(SB), Y2, Y2
	VPSHUFB    ·e5PackHi(SB), Y3, Y3
	VPOR       Y3, Y2, Y2
	VMOVDQU    ·e5PackOrder(SB), Y3
	VPERMD     Y2, Y3, Y2
	VMOVDQU    X2, (BX)
	VEXTRACTI128 $1, Y2, X2
	VMOVQ      X2, 16(BX)
	ADDQ       $64, SI
	ADDQ       $64, DI
	ADDQ       $24, BX
	SUBQ       $64, CX
	JMP        e5split

e5splitdone:
	VZEROUPPER
	RET

// E5SPREAD spreads each quadword's eight 3-bit fields (bits 0-23) to the low bits of its bytes. Clobbers Y3.
#define E5SPREAD(R) \
	VPSLLQ $20, R, Y3 \
	VPOR   Y3, R, R \
	VPAND  Y13, R, R \
	VPSLLQ $10, R, Y3 \
	VPOR   Y3, R, R \
	VPAND  Y14, R, R \
	VPSLLQ $5, R, Y3 \
	VPOR   Y3, R, R \
	VPAND  Y15, R, R

// E5JOIN joins 32 residuals s mm in R with their exponents at OFF(SI) into s eeeee mm at OFF(DI). Clobbers Y3.
#define E5JOIN(R, OFF) \
	VPAND   Y11, R, Y3 \
	VPSLLW  $5, Y3, Y3 \
	VPAND   Y12, R, R \
	VPOR    Y3, R, R \
	VMOVDQU OFF(SI), Y3 \
	VPSLLW  $2, Y3, Y3 \
	VPOR    Y3, R, R \
	VMOVDQU R, OFF(DI)

// func joinE5M2AVX2(exps, res, out *byte, n int)
//
// joinE5M2AVX512 in AVX2, 64 elements a step (n a multiple of 64): splitE5M2AVX2 backwards. A step's 24
// residual bytes are read exactly (16 and 8), each 3-byte group shuffled into a quadword, and its eight 3-bit
// fields spread to a byte each by three shift-and-mask steps (fours, pairs, single fields).
TEXT ·joinE5M2AVX2(SB), NOSPLIT, $0-32
	MOVQ exps+0(FP), SI
	MOVQ res+8(FP), BX
	MOVQ out+16(FP), DI
	MOVQ n+24(FP), CX
	BCASTB(0x04, X11, Y11)
	BCASTB(0x03, X12, Y12)
	BCASTQ(0x00000FFF00000FFF, X13, Y13)
	BCASTQ(0x003F003F003F003F, X14, Y14)
	BCASTB(0x07, X15, Y15)
	VMOVDQU ·e5UnpackOrder(SB), Y10
	VMOVDQU ·e5UnpackLo(SB), Y8
	VMOVDQU ·e5UnpackHi(SB), Y9

e5join:
	CMPQ        CX, $64
	JLT         e5joindone
	VMOVDQU     (BX), X0
	VMOVQ       16(BX), X1
	VINSERTI128 $1, X1, Y0, Y0
	VPERMD      Y0, Y10, Y0 // residual bytes 0-11 | 12-23
	VPSHUFB     Y8, Y0, Y1  // elements 0-15 | 32-47, 3 bytes a quadword
	VPSHUFB     Y9, Y0, Y2  // elements 16-31 | 48-63
	E5SPREAD(Y1)
	E5SPREAD(Y2)
	VPERM2I128  $0x20, Y2, Y1, Y0 // elements 0-31
	VPERM2I128  $0x31, Y2, Y1, Y1 // elements 32-63
	E5JOIN(Y0, 0)
	E5JOIN(Y1, 32)
	ADDQ        $64, SI
	ADDQ        $24, BX
	ADDQ        $64, DI
	SUBQ        $64, CX
	JMP         e5join

e5joindone:
	VZEROUPPER
	RET
