package codec

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// The bf16 kernels that the codec runs (encodeBF16Nibbles, decodeBF16Nibbles: assembly where the CPU has it)
// against the pure-Go SWAR reference kernels, byte for byte, on the kernels' own inputs. Under -tags noasm, or
// on a CPU without AVX2, both sides are the reference and the tests only exercise it.

func logKernel(t testing.TB) {
	t.Helper()
	if !hasBF16Asm {
		t.Log("no assembly kernels on this build or CPU: comparing the pure-Go kernels with themselves")
	}
}

// codebookWithHighNibbles returns a 16-entry bf16 codebook whose exponents span k distinct high nibbles.
func codebookWithHighNibbles(t testing.TB, rng *rand.Rand, k int) *Codebook {
	t.Helper()
	his := rng.Perm(16)[:k]
	seen := map[uint8]bool{}
	var xs []uint8
	for i := 0; len(xs) < 16; i++ {
		x := uint8(his[i%k]<<4 | rng.IntN(16))
		if i < k { // every high nibble at least once
			x = uint8(his[i]<<4 | rng.IntN(16))
		}
		if !seen[x] {
			seen[x] = true
			xs = append(xs, x)
		}
	}
	rng.Shuffle(len(xs), func(i, j int) { xs[i], xs[j] = xs[j], xs[i] })
	cb, err := NewCodebook(BF16, 4, xs)
	require.NoError(t, err)
	his2 := map[uint8]bool{}
	for _, x := range cb.Exponents {
		his2[x>>4] = true
	}
	require.Len(t, his2, k)
	return cb
}

// bf16With returns n bf16 values with random sign and mantissa whose exponents come from the codebook, except
// with probability pEsc, where they are random exponents outside it.
func bf16With(rng *rand.Rand, cb *Codebook, n int, pEsc float64) []byte {
	var out []uint8
	for x := range 256 {
		if !cb.Contains(uint8(x)) {
			out = append(out, uint8(x))
		}
	}
	b := make([]byte, 2*n)
	for i := range n {
		x := cb.Exponents[rng.IntN(len(cb.Exponents))]
		if rng.Float64() < pEsc {
			x = out[rng.IntN(len(out))]
		}
		binary.LittleEndian.PutUint16(b[2*i:], withExponent(uint16(rng.Uint32()), x))
	}
	return b
}

func withExponent(v uint16, x uint8) uint16 { return v&0x807F | uint16(x)<<7 }

type encResult struct {
	frame    []byte
	esc      []byte
	overflow bool
}

// runEncodeKernel runs kernel on chunks [c0, c1) of src (c1 < 0: to the end) into a poisoned frame.
func runEncodeKernel(t testing.TB, kernel func(*encPart), src []byte, cb *Codebook, c0, c1, budget int) encResult {
	t.Helper()
	enc, err := NewEncoder()
	require.NoError(t, err)
	n := len(src) / 2
	lay := codedLayout(uint64(n), 0, 4, 8, DefaultChunk)
	if c1 < 0 {
		c1 = int(lay.Chunks)
	}
	frame := make([]byte, lay.Escapes)
	for i := range frame {
		frame[i] = 0xA5
	}
	p := &encPart{src: src, frame: frame, lay: lay, tab: enc.table(cb), dt: BF16, n: n, c0: c0, c1: c1, budget: budget}
	kernel(p)
	return encResult{frame, p.esc, p.overflow}
}

func requireSameEncode(t testing.TB, src []byte, cb *Codebook, msg string) {
	t.Helper()
	n := len(src) / 2
	chunks := (n + 1<<DefaultChunk - 1) >> DefaultChunk
	ranges := [][2]int{{0, chunks}}
	if chunks > 2 {
		ranges = append(ranges, [2]int{1, chunks - 1}, [2]int{chunks - 1, chunks})
	}
	for _, r := range ranges {
		want := runEncodeKernel(t, encodeBF16NibblesGo, src, cb, r[0], r[1], n+1)
		got := runEncodeKernel(t, encodeBF16Nibbles, src, cb, r[0], r[1], n+1)
		require.False(t, want.overflow)
		require.Equal(t, want.overflow, got.overflow, "%s: chunks %v: overflow", msg, r)
		require.Equal(t, want.esc, got.esc, "%s: chunks %v: escapes", msg, r)
		if !slices.Equal(want.frame, got.frame) {
			for i := range want.frame {
				require.Equal(t, want.frame[i], got.frame[i], "%s: chunks %v: frame byte %d", msg, r, i)
			}
		}
	}
}

func TestBF16EncodeKernelRandom(t *testing.T) {
	logKernel(t)
	rng := rand.New(rand.NewPCG(21, 22))
	def, err := DefaultCodebook(BF16)
	require.NoError(t, err)
	for _, n := range []int{0, 1, 2, 7, 8, 31, 32, 33, 63, 64, 65, 95, 97, 127, 129, 255, 1000, 4095, 4096, 4097, 4096 + 31, 3*4096 + 77, 5*4096 - 1} {
		for _, pEsc := range []float64{0, 1e-3, 0.05, 0.5, 1} {
			src := bf16With(rng, def, n, pEsc)
			requireSameEncode(t, src, def, fmt.Sprintf("n=%d pEsc=%g", n, pEsc))
		}
		// Fully random bits.
		src := make([]byte, 2*n)
		for i := range src {
			src[i] = byte(rng.Uint32())
		}
		requireSameEncode(t, src, def, fmt.Sprintf("n=%d random bits", n))
	}
	// Real-looking data.
	requireSameEncode(t, randomNormalBF16(rng, 3*4096+1001, 0.7), def, "normal")
}

func TestBF16EncodeKernelEscapePositions(t *testing.T) {
	logKernel(t)
	rng := rand.New(rand.NewPCG(23, 24))
	def, err := DefaultCodebook(BF16)
	require.NoError(t, err)
	n := 4096 + 8*32 + 5
	for pos := range 32 {
		// One escape at pos of some steps (the first, a middle one, the last whole one of a chunk, in the
		// second chunk), then two escapes: pos and every other position.
		src := bf16With(rng, def, n, 0)
		for _, step := range []int{0, 5, 4096/32 - 1, 4096/32 + 3} {
			i := 32*step + pos
			binary.LittleEndian.PutUint16(src[2*i:], withExponent(uint16(rng.Uint32()), 0xFE))
		}
		requireSameEncode(t, src, def, fmt.Sprintf("escape at %d", pos))
		for other := range 32 {
			src := bf16With(rng, def, n, 0)
			for _, i := range []int{32*7 + pos, 32*7 + other} {
				binary.LittleEndian.PutUint16(src[2*i:], withExponent(uint16(rng.Uint32()), 0x00))
			}
			requireSameEncode(t, src, def, fmt.Sprintf("escapes at %d and %d", pos, other))
		}
	}
	// Every step escaping, consecutive steps, every element.
	src := bf16With(rng, def, n, 0)
	for i := 0; i < n; i += 31 {
		binary.LittleEndian.PutUint16(src[2*i:], withExponent(uint16(rng.Uint32()), 0xFF))
	}
	requireSameEncode(t, src, def, "an escape every 31 elements")
	requireSameEncode(t, bf16With(rng, def, n, 1), def, "all escapes")
}

func TestBF16EncodeKernelAllPatterns(t *testing.T) {
	logKernel(t)
	rng := rand.New(rand.NewPCG(25, 26))
	src := make([]byte, 2*65536)
	for v := range 65536 {
		binary.LittleEndian.PutUint16(src[2*v:], uint16(v))
	}
	cbs := []*Codebook{must(DefaultCodebook(BF16))}
	for _, k := range []int{1, 2, 3, 16} {
		cbs = append(cbs, codebookWithHighNibbles(t, rng, k))
	}
	for i, cb := range cbs {
		requireSameEncode(t, src, cb, fmt.Sprintf("codebook %d %v, in order", i, cb.Exponents))
		shuffled := slices.Clone(src)
		rng.Shuffle(65536, func(a, b int) {
			shuffled[2*a], shuffled[2*b] = shuffled[2*b], shuffled[2*a]
			shuffled[2*a+1], shuffled[2*b+1] = shuffled[2*b+1], shuffled[2*a+1]
		})
		requireSameEncode(t, shuffled, cb, fmt.Sprintf("codebook %d %v, shuffled", i, cb.Exponents))
	}
}

func TestBF16EncodeKernelCodebooks(t *testing.T) {
	logKernel(t)
	rng := rand.New(rand.NewPCG(27, 28))
	for _, k := range []int{1, 2, 3, 5, 8, 15, 16} {
		for range 4 {
			cb := codebookWithHighNibbles(t, rng, k)
			for _, pEsc := range []float64{0, 0.01, 0.3} {
				src := bf16With(rng, cb, 2*4096+333, pEsc)
				requireSameEncode(t, src, cb, fmt.Sprintf("%d high nibbles %v pEsc=%g", k, cb.Exponents, pEsc))
			}
		}
	}
}

func TestBF16EncodeKernelBudget(t *testing.T) {
	logKernel(t)
	rng := rand.New(rand.NewPCG(29, 30))
	def := must(DefaultCodebook(BF16))
	src := bf16With(rng, def, 3*4096+100, 0.02)
	for _, budget := range []int{0, 1, 2, 10, 100, 200, 245, 246, 247, 1000} {
		want := runEncodeKernel(t, encodeBF16NibblesGo, src, def, 0, -1, budget)
		got := runEncodeKernel(t, encodeBF16Nibbles, src, def, 0, -1, budget)
		require.Equal(t, want.overflow, got.overflow, "budget %d", budget)
		require.Equal(t, want.esc, got.esc, "budget %d", budget)
		if !want.overflow {
			require.Equal(t, want.frame, got.frame, "budget %d", budget)
		}
	}
}

// runDecodeKernel decodes chunks [c0, c1) of a frame whose codes and residuals are random bytes.
func runDecodeKernel(kernel func(*decPart), frame []byte, lay Layout, exps []uint8, n, c0, c1 int) []byte {
	var tab decTable
	copy(tab.exp[:], exps)
	tab.fillBF16Nibbles()
	out := make([]byte, 2*n)
	for i := range out {
		out[i] = 0x5A
	}
	h := Header{DType: BF16, CodeBits: 4, Elements: uint64(n), ChunkLog2: DefaultChunk}
	p := &decPart{frame: frame, out: out, lay: lay, h: &h, tab: &tab, n: n, c0: c0, c1: c1}
	kernel(p)
	return out
}

func TestBF16DecodeKernel(t *testing.T) {
	logKernel(t)
	rng := rand.New(rand.NewPCG(31, 32))
	// 16 codebooks of 16 exponents that together hold every exponent, then a few with repeats.
	all := rng.Perm(256)
	var books [][]uint8
	for k := range 16 {
		var xs []uint8
		for _, x := range all[16*k : 16*k+16] {
			xs = append(xs, uint8(x))
		}
		books = append(books, xs)
	}
	books = append(books, make([]uint8, 16), slices.Repeat([]uint8{0xFF}, 16), must(DefaultCodebook(BF16)).Exponents)
	for _, n := range []int{0, 1, 2, 31, 32, 33, 64, 65, 4095, 4096, 4097, 4096 + 32*7 + 13, 3*4096 + 1, 4 * 4096} {
		lay := codedLayout(uint64(n), 0, 4, 8, DefaultChunk)
		frame := make([]byte, lay.Escapes)
		for i := range frame {
			frame[i] = byte(rng.Uint32())
		}
		chunks := int(lay.Chunks)
		ranges := [][2]int{{0, chunks}}
		if chunks > 2 {
			ranges = append(ranges, [2]int{1, chunks - 1}, [2]int{chunks - 1, chunks})
		}
		for bi, exps := range books {
			for _, r := range ranges {
				if r[0] >= r[1] {
					continue
				}
				want := runDecodeKernel(decodeBF16NibblesGo, frame, lay, exps, n, r[0], r[1])
				got := runDecodeKernel(decodeBF16Nibbles, frame, lay, exps, n, r[0], r[1])
				if !slices.Equal(want, got) {
					for i := range want {
						require.Equal(t, want[i], got[i], "n=%d book %d chunks %v: byte %d", n, bi, r, i)
					}
				}
			}
		}
	}
}

// Every (code, residual) pair of every codebook entry, through the whole codec.
func TestBF16KernelsRoundTripAllPatterns(t *testing.T) {
	rng := rand.New(rand.NewPCG(33, 34))
	for _, k := range []int{1, 2, 16} {
		cb := codebookWithHighNibbles(t, rng, k)
		enc, err := NewEncoder(WithCodebook(cb))
		require.NoError(t, err)
		dec, err := NewDecoder()
		require.NoError(t, err)
		var src []byte
		for _, x := range cb.Exponents {
			for r := range 256 {
				src = binary.LittleEndian.AppendUint16(src, withExponent(uint16(r&0x80)<<8|uint16(r&0x7F), x))
			}
		}
		h := roundTrip(t, enc, dec, src, BF16)
		require.False(t, h.Raw)
		require.Zero(t, h.Escapes)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// Kernel-only throughput, in cache (compute bound) and on the codec benchmark's 32 MiB (memory bound), next to
// copy() of the same buffers.
func BenchmarkBF16Kernels(b *testing.B) {
	def := must(DefaultCodebook(BF16))
	enc := must(NewEncoder())
	for _, size := range []int{64 << 10, benchBytes} {
		src := randomNormalBF16(rand.New(rand.NewPCG(1, 1)), size/2, 0.7)
		n := size / 2
		lay := codedLayout(uint64(n), 0, 4, 8, DefaultChunk)
		frame := make([]byte, lay.Escapes)
		p := &encPart{src: src, frame: frame, lay: lay, tab: enc.table(def), dt: BF16, n: n, c1: int(lay.Chunks), budget: n}
		var tab decTable
		copy(tab.exp[:], def.Exponents)
		tab.fillBF16Nibbles()
		out := make([]byte, size)
		h := Header{DType: BF16, CodeBits: 4, Elements: uint64(n), ChunkLog2: DefaultChunk}
		d := &decPart{frame: frame, out: out, lay: lay, h: &h, tab: &tab, n: n, c1: int(lay.Chunks)}
		for _, k := range []struct {
			name string
			f    func()
		}{
			{"copy", func() { copy(out, src) }},
			{"encode", func() { p.esc = p.esc[:0]; encodeBF16Nibbles(p) }},
			{"encodeGo", func() { p.esc = p.esc[:0]; encodeBF16NibblesGo(p) }},
			{"decode", func() { decodeBF16Nibbles(d) }},
			{"decodeGo", func() { decodeBF16NibblesGo(d) }},
		} {
			b.Run(fmt.Sprintf("%s/%dKiB", k.name, size>>10), func(b *testing.B) {
				b.SetBytes(int64(size))
				for b.Loop() {
					k.f()
				}
			})
		}
	}
}
