package codec

import (
	"fmt"
	"sort"
	"unsafe"
)

// segments is a tensor held in pieces (EncodeSegments, DecodeSegments): the pieces and where each starts in
// the concatenation. Kernels see it one chunk at a time (a few KiB): in place when one segment holds the
// chunk, else through a per-part scratch buffer that stays in L1, so a paged tensor costs no pass over memory
// beyond the codec's own.
type segments struct {
	segs [][]byte
	off  []int // off[k]: bytes before segs[k]; off[len(segs)]: the total
}

// set takes segs (not copied), checking that each holds whole elements of dt.
func (s *segments) set(segs [][]byte, dt DType) error {
	if !dt.Valid() {
		return fmt.Errorf("%w: %d", ErrDType, uint8(dt))
	}
	size := dt.Size()
	s.off = s.off[:0]
	total := 0
	for k, b := range segs {
		if len(b)%size != 0 {
			return fmt.Errorf("%w: segment %d is %d bytes, not a whole number of %d-byte %s elements", ErrSize, k, len(b), size, dt)
		}
		s.off = append(s.off, total)
		total += len(b)
	}
	s.off = append(s.off, total)
	s.segs = segs
	return nil
}

// reset drops the caller's segments once a call is done.
func (s *segments) reset() { s.segs = nil }

func (s *segments) len() int { return s.off[len(s.off)-1] }

// find returns the segment holding byte b (b < len), searching forward from segment k when k is at or before it.
func (s *segments) find(b, k int) int {
	if k < 0 || k >= len(s.segs) || s.off[k] > b {
		k = sort.Search(len(s.segs), func(j int) bool { return s.off[j+1] > b }) // first segment ending after b
		return k
	}
	for s.off[k+1] <= b {
		k++
	}
	return k
}

// gather returns bytes [b0, b1) of the concatenation: in place when one segment holds them, else copied into
// scratch. k is a hint for find; the segment holding byte b1-1 comes back as the next hint.
func (s *segments) gather(scratch []byte, b0, b1, k int) ([]byte, int) {
	k = s.find(b0, k)
	if s.off[k+1] >= b1 {
		return s.segs[k][b0-s.off[k] : b1-s.off[k]], k
	}
	out := scratch[:b1-b0]
	for n := 0; n < len(out); {
		for s.off[k+1] <= b0+n { // empty segments, or the one just finished
			k++
		}
		n += copy(out[n:], s.segs[k][b0+n-s.off[k]:])
	}
	return out, k
}

// spanAlign is the element alignment of the segment boundaries inside a chunk for which kernels run on the
// segments in place (encodeBF16Span, decodeBF16Span: their assembly steps are 64 and 32 elements).
const spanAlign = 64

// aligned reports whether every segment boundary strictly inside bytes [b0, b1) is a multiple of align.
func (s *segments) aligned(b0, b1, k, align int) bool {
	for k = s.find(b0, k); s.off[k+1] < b1; k++ {
		if s.off[k+1]%align != 0 {
			return false
		}
	}
	return true
}

// piece returns the part of bytes [b, b1) that lies in one segment, and that segment (k: hint as for find).
func (s *segments) piece(b, b1, k int) ([]byte, int) {
	k = s.find(b, k)
	e := min(s.off[k+1], b1)
	return s.segs[k][b-s.off[k] : e-s.off[k]], k
}

// start returns where bytes [b, b1) begin when one segment holds them all, else nil: the high-ratio coders
// prefetch a chunk from its start on, which is only its memory where the chunk does not run on into another
// block.
func (s *segments) start(b, b1 int) *byte {
	if piece, _ := s.piece(b, b1, -1); len(piece) == b1-b && len(piece) > 0 {
		return &piece[0]
	}
	return nil
}

// prefetchAhead is how far ahead in the concatenation of the bytes a kernel works on it prefetches, when the
// segments are scattered: a paged cache's blocks are cold in the caches and in the TLB, and the hardware
// prefetcher stops at each block's end, so without it every block starts with a page walk and a run of misses.
// One 6 KiB block of the benchmark's cache (BenchmarkPagedKV: 2,048 to 4,096 bytes gained less, 9,216 nothing).
const prefetchAhead = 6144

// ahead returns the address of byte b+d of the concatenation, for a kernel working on byte b to prefetch, and
// for how many bytes from b on that address moves along within one segment (rounded up to whole spanAlign
// steps: prefetching a little past a segment is harmless). Past the end it returns 0 (nothing to prefetch) and
// the bytes left. k is a hint for find, for byte b+d; the segment comes back as the next hint.
func (s *segments) ahead(b, d, k, size int) (uintptr, int, int) {
	if b+d >= s.len() {
		return 0, s.len() - b, k
	}
	k = s.find(b+d, k)
	o := b + d - s.off[k]
	step := spanAlign * size
	n := (s.off[k+1] - b - d + step - 1) / step * step
	return uintptr(unsafe.Pointer(&s.segs[k][o])), n, k
}

// stretches walks bytes [b0, b1) of the concatenation (on kernel steps, see aligned) piece by piece, each piece
// in stretches over which the bytes prefetchAhead further on lie in one segment: fn gets the piece (the part of
// [b0, b1) in one segment, from its byte b on), the stretch [q, r) and the address to prefetch. It stops when fn
// returns false, and returns the hints for find (k for b, ka for the prefetched bytes) and whether it finished.
func (s *segments) stretches(b0, b1, k, ka, size int, fn func(piece []byte, b, q, r int, pf uintptr) bool) (int, int, bool) {
	for b := b0; b < b1; {
		var piece []byte
		piece, k = s.piece(b, b1, k)
		e := b + len(piece)
		for q := b; q < e; {
			pf, n, ka2 := s.ahead(q, prefetchAhead, ka, size)
			ka = ka2
			r := min(e, q+n)
			if !fn(piece, b, q, r, pf) {
				return k, ka, false
			}
			q = r
		}
		b = e
	}
	return k, ka, true
}

// elemPieces calls fn, in order, for each part of elements [i0, i1) of the concatenation that lies in one
// segment: the part's bytes and the index of its first element. Codecs whose residuals are bit-packed (resBits
// not a whole number of bytes) can only split or join a part that starts on a residual byte: when a boundary
// inside [i0, i1) is not a multiple of 8 elements, elemPieces calls nothing and returns false (the caller then
// copies the chunk through scratch). i0 must be a multiple of 8.
func (s *segments) elemPieces(i0, i1, size int, resBits uint, fn func(piece []byte, e0 int)) bool {
	b0, b1 := i0*size, i1*size
	if resBits%8 != 0 && !s.aligned(b0, b1, -1, 8*size) {
		return false
	}
	k := -1
	for b := b0; b < b1; {
		var piece []byte
		piece, k = s.piece(b, b1, k)
		fn(piece, b/size)
		b += len(piece)
	}
	return true
}

// view returns where bytes [b0, b1) of the concatenation are to be written: in place (true) when one segment
// holds them, else scratch, to be scattered afterwards.
func (s *segments) view(scratch []byte, b0, b1, k int) ([]byte, bool, int) {
	k = s.find(b0, k)
	if s.off[k+1] >= b1 {
		return s.segs[k][b0-s.off[k] : b1-s.off[k]], true, k
	}
	return scratch[:b1-b0], false, k
}

// scatter writes src to the concatenation from byte b0 on; k is a hint as for gather.
func (s *segments) scatter(src []byte, b0, k int) int {
	k = s.find(b0, k)
	for n := 0; n < len(src); {
		for s.off[k+1] <= b0+n {
			k++
		}
		n += copy(s.segs[k][b0+n-s.off[k]:], src[n:])
	}
	return k
}

// copyTo copies the whole concatenation to dst and returns its length.
func (s *segments) copyTo(dst []byte) int {
	n := 0
	for _, b := range s.segs {
		n += copy(dst[n:], b)
	}
	return n
}

// copyFrom fills the segments from src, the concatenation.
func (s *segments) copyFrom(src []byte) {
	n := 0
	for _, b := range s.segs {
		n += copy(b, src[n:])
	}
}
