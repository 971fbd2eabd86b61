//go:build !amd64 || !gc || noasm

package codec

// hasEntropyAsm and hasEntropyAVX2 report whether the entropy coder runs parts in assembly.
var hasEntropyAsm, hasEntropyAVX2, cpuHasEntropyAVX2 = false, false, false

func decodeLanesAVX2(stream *byte, n, steps int, tab *simdTab, st *[2 * lanes]uint16, exps *byte, out, res *byte) (done, pos, escapes int) {
	panic("splitzip: no entropy assembly on this platform")
}

func encodeStepsAVX2(exps *byte, steps int, lut *[256]uint32, st *encSIMD, bytes *byte, ev *uint32, next, nextRes, stream *byte) (escapes int) {
	panic("splitzip: no entropy assembly on this platform")
}

func encodeStepsNarrowAVX2(exps *byte, steps int, nt *encNarrow, st *encSIMD, bytes *byte, ev *uint32, next, nextRes, stream *byte) (escapes int) {
	panic("splitzip: no entropy assembly on this platform")
}

func interleaveAVX2(bytes *byte, r1, r2 *uint32, steps int, out *byte) (n int) {
	panic("splitzip: no entropy assembly on this platform")
}

func splitBF16AVX2(src, exps, res *byte, n int) {
	panic("splitzip: no entropy assembly on this platform")
}

func joinBF16AVX2(exps, res, out *byte, n int) {
	panic("splitzip: no entropy assembly on this platform")
}

func decodeLanesAVX512(stream *byte, n, steps int, tab *simdTab, st *[2 * lanes]uint16, exps *byte) (done, pos, escapes int) {
	panic("splitzip: no entropy assembly on this platform")
}

func joinBF16AVX512(exps, res, out *byte, n int) {
	panic("splitzip: no entropy assembly on this platform")
}

func encodeStepsAVX512(exps *byte, steps int, tab *encTab, st *encSIMD, bytes *byte, stride int) (escapes int) {
	panic("splitzip: no entropy assembly on this platform")
}

func interleaveAVX512(bytes *byte, stride int, r1, r2 *uint32, steps int, out *byte) (n int) {
	panic("splitzip: no entropy assembly on this platform")
}

func splitBF16AVX512(src, exps, res *byte, n int) {
	panic("splitzip: no entropy assembly on this platform")
}

func splitE4M3AVX512(src, exps, res *byte, n int) {
	panic("splitzip: no entropy assembly on this platform")
}

func splitE5M2AVX512(src, exps, res *byte, n int) {
	panic("splitzip: no entropy assembly on this platform")
}

func joinE4M3AVX512(exps, res, out *byte, n int) {
	panic("splitzip: no entropy assembly on this platform")
}

func joinE5M2AVX512(exps, res, out *byte, n int) {
	panic("splitzip: no entropy assembly on this platform")
}

func splitE4M3AVX2(src, exps, res *byte, n int) {
	panic("splitzip: no entropy assembly on this platform")
}

func splitE5M2AVX2(src, exps, res *byte, n int) {
	panic("splitzip: no entropy assembly on this platform")
}

func joinE4M3AVX2(exps, res, out *byte, n int) {
	panic("splitzip: no entropy assembly on this platform")
}

func joinE5M2AVX2(exps, res, out *byte, n int) {
	panic("splitzip: no entropy assembly on this platform")
}
