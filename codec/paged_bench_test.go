package codec

import (
	"flag"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"testing"
)

var pagedHuge = flag.Bool("pages2m", false, "BenchmarkPagedKV: the pool in transparent huge pages (Linux)")

// BenchmarkPagedKV is the connector's host path on its real layout: a paged KV cache far larger than the last
// level cache (512 MiB), filled with the real KV fixture, whose 6 KiB blocks (16 tokens × 3 heads × 64 bf16,
// SmolLM2-135M) a request holds in shuffled order. A frame is one layer of a request, its K blocks then its V
// blocks (connector.layerSegments); each iteration takes the next of many requests, so its blocks are cold as in
// a handoff. Rows per mode (fast, high-ratio with a given table): EncodeSegmentsCRC and DecodeSegments run on
// the blocks where they lie; "contiguous" runs Encode with the CRC and DecodeInto on the same requests' bytes
// gathered into one cold buffer each; "hot" repeats one request (in cache). One goroutine: per-core cost. GB/s are of raw bytes.
//
//	go test -run '^$' -bench PagedKV -benchtime 200x ./codec [-args -pages2m]
//
// The pool comes in 4 KiB pages (Go's heap where transparent huge pages are in "madvise" mode) and, with
// -pages2m, in 2 MiB pages: a cache allocated for THP, or registered with the connector (which advises it).
func BenchmarkPagedKV(b *testing.B) {
	const (
		block     = 16 * 3 * 64 * 2
		poolBytes = 512 << 20
	)
	kv := fixtureKV(b)
	pool := benchPool(b, poolBytes, *pagedHuge)
	for j := 0; j < len(pool); {
		j += copy(pool[j:], kv)
	}
	// The pool is one layer's K region then its V region, numBlocks blocks each.
	numBlocks := poolBytes / 2 / block
	cb, err := DefaultCodebook(BF16)
	if err != nil {
		b.Fatal(err)
	}
	h, _ := NewHistogram(BF16)
	_ = h.Add(kv)
	table, err := h.CodeTable() // high-ratio frames: a table given, as the connector's learned ones are
	if err != nil {
		b.Fatal(err)
	}
	for _, tokens := range []int{4096, 16384} {
		nb := min(tokens/16, 8<<20/(2*block)) // blocks per frame: the connector's 8 MiB frames
		frameRaw := 2 * nb * block
		reqs := max(4, 192<<20/frameRaw) // requests cycled through: 192 MiB of blocks, 6× the L3
		rng := rand.New(rand.NewPCG(uint64(tokens), 7))
		perm := rng.Perm(numBlocks)
		segs := make([][][]byte, reqs)
		for r := range segs {
			ids := perm[r*nb : (r+1)*nb]
			for kvi := range 2 {
				for _, id := range ids {
					o := kvi*numBlocks*block + id*block
					segs[r] = append(segs[r], pool[o:o+block:o+block])
				}
			}
		}
		contig := make([][]byte, reqs)
		for r := range contig {
			contig[r] = concat(segs[r])
		}
		out := make([][][]byte, reqs) // decode destinations: other blocks of the pool, as a consumer's
		for r := range out {
			ids := perm[(reqs+r)*nb : (reqs+r+1)*nb]
			for kvi := range 2 {
				for _, id := range ids {
					o := kvi*numBlocks*block + id*block
					out[r] = append(out[r], pool[o:o+block:o+block])
				}
			}
		}
		dst := make([]byte, 0, MaxEncodedLen(frameRaw))
		for _, mode := range []struct {
			name string
			opts []EOption
		}{
			{"fast", []EOption{WithCodebook(cb)}},
			{"high-ratio", []EOption{WithMode(ModeHighRatio), WithCodeTable(table)}},
		} {
			benchPagedMode(b, fmt.Sprintf("tokens=%d/%s", tokens, mode.name), mode.opts, segs, contig, out, frameRaw, dst)
		}
		b.Run(fmt.Sprintf("tokens=%d/copy", tokens), func(b *testing.B) { // the scattered blocks gathered into dst: a raw handoff's copy
			b.SetBytes(int64(frameRaw))
			r := 0
			for b.Loop() {
				n := 0
				for _, s := range segs[r] {
					n += copy(dst[:cap(dst)][n:], s)
				}
				r = (r + 1) % reqs
			}
		})
	}
}

// benchPagedMode is BenchmarkPagedKV's rows for one codec mode (the encoder's options opts).
func benchPagedMode(b *testing.B, prefix string, opts []EOption, segs [][][]byte, contig [][]byte, out [][][]byte, frameRaw int, dst []byte) {
	reqs := len(segs)
	enc, _ := NewEncoder(append([]EOption{WithEncoderConcurrency(1)}, opts...)...)
	dec, _ := NewDecoder(WithDecoderConcurrency(1))
	frames := make([][]byte, reqs)
	for r := range frames {
		frames[r], _ = enc.Encode(nil, contig[r], BF16)
	}
	// row times f over the requests in turn (a hot row reads request 0 every time).
	row := func(name string, allocs bool, f func(r int) error) {
		b.Run(prefix+"/"+name, func(b *testing.B) {
			b.SetBytes(int64(frameRaw))
			if allocs {
				b.ReportAllocs()
			}
			r := 0
			for b.Loop() {
				if err := f(r); err != nil {
					b.Fatal(err)
				}
				r = (r + 1) % reqs
			}
		})
	}
	row("EncodeSegmentsCRC", true, func(r int) (err error) {
		dst, _, err = enc.EncodeSegmentsCRC(dst[:0], segs[r], BF16)
		return err
	})
	row("contiguous/Encode+CRC", false, func(r int) error {
		dst, _ = enc.Encode(dst[:0], contig[r], BF16)
		_ = crc32.Checksum(dst, castagnoli)
		return nil
	})
	row("hot/EncodeSegmentsCRC", false, func(int) error {
		dst, _, _ = enc.EncodeSegmentsCRC(dst[:0], segs[0], BF16)
		return nil
	})
	row("DecodeSegments", true, func(r int) error {
		_, err := dec.DecodeSegments(out[r], frames[r])
		return err
	})
	row("contiguous/DecodeInto", false, func(r int) error {
		_, err := dec.DecodeInto(contig[(r+1)%reqs], frames[r])
		return err
	})
	row("hot/DecodeSegments", false, func(int) error {
		_, err := dec.DecodeSegments(out[0], frames[0])
		return err
	})
}

// fixtureKV is every tensor of the real KV evaluation set, back to back.
func fixtureKV(t testing.TB) []byte {
	var kv []byte
	for _, x := range loadFixture(t, "kv_evaluation.safetensors").Tensors {
		kv = append(kv, x.Data...)
	}
	return kv
}
