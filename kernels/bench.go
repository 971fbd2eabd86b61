package kernels

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/kernels/cuda"
)

// BenchConfig sets up RunBench.
type BenchConfig struct {
	// KV is real bf16 KV data (the evaluation fixture); inputs are tiled from it, with the low mantissa bits
	// of each copy scrambled, so they keep its exponent statistics.
	KV []byte
	// Sizes are the dense input sizes in bytes (default 256 MiB and 1 GiB).
	Sizes []int
	// SmallSizes are timed for latency against a bare launch + copy (default 64 KiB, 256 KiB, 1 MiB, 4 MiB).
	SmallSizes []int
	// Variants are the kernel variants timed at the first size beside the default codec: "encode/decode"
	// (see Variants), optionally with "+n" (no look-back: timing only), "+d" (default-cached accesses) or
	// "+s" (streaming encode stores), "+g" (pipelined kernels on twice the resident grid; "+gg" four times),
	// "+p" (the sm_80 kernels with plain launches on a Hopper GPU: no programmatic dependent launch),
	// "+r" / "+f" / "+e" / "+h" (the streaming encoder without its raw-fallback launch / its finishing blocks /
	// the finishing blocks' stores of the escapes / the header warps' writes: timing only, right only where dst
	// already holds the frame, as in the bench, which times them after the default codec on the same buffers).
	// Default: each variant for both, the tile encoder with "+n" and the default codec with "+p".
	// The other sizes, the paged and the small rows use the default codec.
	Variants []string
	// Reps is the number of timed runs per figure (median reported; default 30).
	Reps int
	// SkipPaged leaves out the paged gather-encode / decode-scatter rows (Llama-3-8B shape).
	SkipPaged bool
	// Log receives progress lines (may be nil).
	Log io.Writer
}

// BenchRow is one line of the table.
type BenchRow struct {
	What     string  // "dense", "paged-1frame", "paged-per-layer", "small"
	Size     int     // raw bytes
	Variant  string  // "encode/decode" kernel variants; "" for the default
	Encode   float64 // GB/s of raw bytes (dense, paged) or µs (small)
	Decode   float64
	Copy     float64 // GB/s read + written (dense, paged) or µs of launch + copy (small)
	SMCopy   float64 // GB/s read + written by a plain 16-byte copy kernel (dense)
	Roofline float64 // GB/s of raw bytes: copy × 2 / 3.5
	Ratio    float64
	Escapes  uint64
	Verified bool
	// EncodeIdle: the default dense encode timed as the runs before the sixth session's were, from an idle
	// stream, the host's launch latency in the window (GB/s).
	EncodeIdle float64
}

// BenchReport is RunBench's result.
type BenchReport struct {
	Card   string
	Driver int
	// DependentLaunch: the default codec runs the sm_90 kernels with programmatic dependent launch.
	DependentLaunch bool
	Rows            []BenchRow
}

type benchEnv struct {
	ctx    *cuda.Context
	s      *cuda.Stream
	e0     *cuda.Event
	e1     *cuda.Event
	reps   int
	log    io.Writer
	bufs   []*cuda.DeviceBuffer
	times  []float32
	smCopy float64
	// spin holds the stream for a while (sz_spin). With hold set, each timed op is queued behind it, so the
	// window measures the GPU's time, not the host's launch latency: the throughput rows. The latency rows of
	// small inputs leave hold off and include the launch on purpose.
	spin func() error
	hold bool
}

// holdTime is how long sz_spin holds the stream before a timed op: far longer than queueing the op's
// launches and two events takes the host.
const holdTime = 200 * time.Microsecond

// launchSpin enqueues a single thread that spins for d on the GPU.
func (c *Codec) launchSpin(s *cuda.Stream, d time.Duration) error {
	return c.spin.Launch(s, cuda.Dim3{X: 1}, cuda.Dim3{X: 1}, 0, cuda.NewArgs().U64(uint64(d.Nanoseconds())))
}

func (b *benchEnv) logf(format string, args ...any) {
	if b.log != nil {
		fmt.Fprintf(b.log, format+"\n", args...)
	}
}

// alloc returns n bytes of zeroed device memory (zero as the encoders' workspaces must start).
func (b *benchEnv) alloc(n int) (cuda.DevicePtr, error) {
	buf, err := b.ctx.Alloc(max(n, 16))
	if err != nil {
		return 0, err
	}
	b.bufs = append(b.bufs, buf)
	return buf.Ptr(), b.s.MemsetD8Async(buf.Ptr(), 0, max(n, 16))
}

// median times op (given the rep index) with events, after two warm-up runs; milliseconds.
func (b *benchEnv) median(op func(i int) error) (float64, error) { return b.medianReset(nil, op) }

// medianReset is median with reset, when not nil, enqueued before each op outside the timed window.
func (b *benchEnv) medianReset(reset func() error, op func(i int) error) (float64, error) {
	for i := range 2 {
		if reset != nil {
			if err := reset(); err != nil {
				return 0, err
			}
		}
		if err := op(i); err != nil {
			return 0, err
		}
	}
	b.times = b.times[:0]
	for i := range b.reps {
		if reset != nil {
			if err := reset(); err != nil {
				return 0, err
			}
		}
		if b.hold {
			if err := b.spin(); err != nil {
				return 0, err
			}
		}
		if err := b.e0.Record(b.s); err != nil {
			return 0, err
		}
		if err := op(i); err != nil {
			return 0, err
		}
		if err := b.e1.Record(b.s); err != nil {
			return 0, err
		}
		if err := b.e1.Synchronize(); err != nil {
			return 0, err
		}
		ms, err := cuda.ElapsedMs(b.e0, b.e1)
		if err != nil {
			return 0, err
		}
		b.times = append(b.times, ms)
	}
	slices.Sort(b.times)
	return float64(b.times[len(b.times)/2]), nil
}

// tileKV fills n bytes with copies of kv, scrambling the low 3 mantissa bits of each copy.
func tileKV(kv []byte, n int, seed uint64) []byte {
	out := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, 1))
	for off := 0; off < n; off += len(kv) {
		m := copy(out[off:], kv)
		x := uint16(r.Uint32() & 7)
		for i := off; i+1 < off+m; i += 2 {
			v := binary.LittleEndian.Uint16(out[i:]) ^ x
			binary.LittleEndian.PutUint16(out[i:], v)
			x = (x*5 + 3) & 7
		}
	}
	return out
}

// RunBench measures the GPU codec on ctx's device: dense encode and decode against the device-to-device
// copy bandwidth of the same run, the paged variants, and small-input latency. It checks the results it
// times (GPU frames equal CPU frames at the first size; decodes are bit-exact).
func RunBench(ctx *cuda.Context, cfg BenchConfig) (*BenchReport, error) {
	if len(cfg.KV) < 2 || len(cfg.KV)%2 != 0 {
		return nil, errors.New("splitzip: bench needs bf16 KV data to tile")
	}
	if cfg.Sizes == nil {
		cfg.Sizes = []int{256 << 20, 1 << 30}
	}
	if cfg.SmallSizes == nil {
		cfg.SmallSizes = []int{64 << 10, 256 << 10, 1 << 20, 4 << 20}
	}
	if cfg.Variants == nil {
		for _, v := range Variants {
			cfg.Variants = append(cfg.Variants, v+"/"+v)
		}
		// An experiment: the tile encoder without its look-back (wrong frames, timing only; the streaming
		// encoder has none in its data path).
		cfg.Variants = append(cfg.Variants, SmallEncodeKernels+"/"+SmallEncodeKernels+"+n")
		// What programmatic dependent launch gives the default codec (nothing, off Hopper).
		cfg.Variants = append(cfg.Variants, DefaultEncodeKernels+"/"+DefaultDecodeKernels+"+p")
	}
	if cfg.Reps == 0 {
		cfg.Reps = 30
	}
	name, err := ctx.Device().Name()
	if err != nil {
		return nil, err
	}
	drvVer, _ := cuda.DriverVersion()
	rep := &BenchReport{Card: name, Driver: drvVer}
	s, err := ctx.NewStream(cuda.StreamNonBlocking)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	b := &benchEnv{ctx: ctx, s: s, reps: cfg.Reps, log: cfg.Log, hold: true}
	if b.e0, err = ctx.NewEvent(cuda.EventDefault); err != nil {
		return nil, err
	}
	defer b.e0.Close()
	if b.e1, err = ctx.NewEvent(cuda.EventDefault); err != nil {
		return nil, err
	}
	defer b.e1.Close()
	defer func() {
		for _, buf := range b.bufs {
			buf.Free()
		}
	}()
	codecs := map[string]*Codec{}
	def, err := NewCodec(ctx)
	if err != nil {
		return nil, err
	}
	defer def.Close()
	codecs[""] = def
	b.spin = func() error { return def.launchSpin(s, holdTime) }
	rep.DependentLaunch = def.pdl
	for _, v := range cfg.Variants {
		names, tune, _ := strings.Cut(v, "+")
		enc, dec, _ := strings.Cut(names, "/")
		var bits uint32
		for _, t := range tune {
			bits |= map[rune]uint32{'n': tuneNoLookback, 'd': tunePlainLoads, 's': tuneStreamStores,
				'r': tuneNoRawLaunch, 'f': tuneNoFinishLaunch, 'e': tuneNoPlace, 'h': tuneNoHeader}[t]
		}
		mul := 1 + strings.Count(tune, "g") // "+g": twice the resident grid of pipelined kernels
		opts := []Option{WithKernels(enc, dec), withTune(bits), func(o *options) error { o.gridMul = mul; return nil }}
		if strings.Contains(tune, "p") {
			opts = append(opts, withoutDependentLaunch())
		}
		c, err := NewCodec(ctx, opts...)
		if err != nil {
			return nil, err
		}
		b.logf("codec %s: encode %s %d blocks/SM, decode %s %d blocks/SM, dependent launch %v", v, c.enc.name, c.enc.perSM, c.dec.name, c.dec.perSM, c.pdl)
		defer c.Close()
		codecs[v] = c
	}
	cb, err := codec.DefaultCodebook(codec.BF16)
	if err != nil {
		return nil, err
	}

	for si, size := range cfg.Sizes {
		variants := append([]string{""}, cfg.Variants...)
		if si > 0 {
			variants = []string{""}
		}
		rows, err := b.dense(codecs, variants, cb, cfg.KV, size, si == 0)
		if err != nil {
			return rep, err
		}
		rep.Rows = append(rep.Rows, rows...)
	}
	if !cfg.SkipPaged {
		rows, err := b.paged(codecs[""], cb, cfg.KV)
		if err != nil {
			return rep, err
		}
		rep.Rows = append(rep.Rows, rows...)
	}
	for _, size := range cfg.SmallSizes {
		row, err := b.small(codecs[""], cb, cfg.KV, size)
		if err != nil {
			return rep, err
		}
		rep.Rows = append(rep.Rows, row)
	}
	return rep, nil
}

func (b *benchEnv) dense(codecs map[string]*Codec, variants []string, cb *codec.Codebook, kv []byte, size int, crossCheck bool) ([]BenchRow, error) {
	size &^= 15
	host := tileKV(kv, size, uint64(size))
	var src, dst, out [2]cuda.DevicePtr
	var err error
	for i := range 2 {
		if src[i], err = b.alloc(size); err != nil {
			return nil, err
		}
		if dst[i], err = b.alloc(MaxEncodedLen(size)); err != nil {
			return nil, err
		}
		if out[i], err = b.alloc(size); err != nil {
			return nil, err
		}
	}
	sizeOut, _ := b.alloc(16)
	status, _ := b.alloc(16)
	ws, err := b.alloc(EncodeWorkspaceSize(size))
	if err != nil {
		return nil, err
	}
	if err := b.s.CopyHtoD(src[0], host); err != nil {
		return nil, err
	}
	if err := b.s.MemcpyDtoDAsync(src[1], src[0], size); err != nil {
		return nil, err
	}

	copyMs, err := b.median(func(i int) error { return b.s.MemcpyDtoDAsync(out[i%2], src[(i+1)%2], size) })
	if err != nil {
		return nil, err
	}
	copyRate := 2 * float64(size) / copyMs / 1e6
	smMs, err := b.median(func(i int) error { return codecs[""].launchCopy16(b.s, out[i%2], src[(i+1)%2], size) })
	if err != nil {
		return nil, err
	}
	b.smCopy = 2 * float64(size) / smMs / 1e6
	b.logf("dense %d MiB: copy %.0f GB/s, SM copy kernel %.0f GB/s", size>>20, copyRate, b.smCopy)

	var rows []BenchRow
	for _, v := range variants {
		c := codecs[v]
		// Every codec starts from a zero workspace, and one without the raw-fallback kernel, which zeroes its
		// look-back words and counts, gets them zeroed before each run, outside the timed window.
		zero := func() error { return b.s.MemsetD8Async(ws, 0, EncodeWorkspaceSize(size)) }
		if err := zero(); err != nil {
			return nil, err
		}
		var reset func() error
		if c.tune&tuneNoRawLaunch != 0 {
			reset = func() error { return b.s.MemsetD8Async(ws, 0, controlBytes(1, chunksOf(uint64(size/2)))) }
		}
		encode := func(i int) error { return c.EncodeAsync(b.s, src[i%2], size, cb, dst[i%2], sizeOut, ws) }
		encMs, err := b.medianReset(reset, encode)
		if err != nil {
			return nil, err
		}
		decMs, err := b.median(func(i int) error {
			return c.DecodeAsync(b.s, dst[i%2], MaxEncodedLen(size), out[i%2], size, status)
		})
		if err != nil {
			return nil, err
		}
		var encIdle float64
		if v == "" {
			// For comparison with runs before the stream was held: the default codec timed from an idle stream,
			// the host's launch latency in the window.
			b.hold = false
			idleMs, err := b.median(encode)
			b.hold = true
			if err != nil {
				return nil, err
			}
			encIdle = float64(size) / idleMs / 1e6
			b.logf("dense %d MiB: default encode from an idle stream (launch in the window) %.0f GB/s", size>>20, encIdle)
		}
		// Check what was timed.
		hdr := make([]byte, 64)
		if err := b.s.CopyDtoH(hdr, dst[0]); err != nil {
			return nil, err
		}
		h, err := codec.ParseHeader(hdr)
		if err != nil {
			return nil, fmt.Errorf("bench frame: %w", err)
		}
		st := make([]byte, 4)
		if err := b.s.CopyDtoH(st, status); err != nil {
			return nil, err
		}
		if err := StatusError(binary.LittleEndian.Uint32(st)); err != nil && !strings.Contains(v, "+n") {
			return nil, err
		}
		got := make([]byte, size)
		if err := b.s.CopyDtoH(got, out[0]); err != nil {
			return nil, err
		}
		verified := bytes.Equal(got, host)
		if !verified && strings.Contains(v, "+n") {
			verified = true // no look-back: escape offsets are wrong by design, timing only
		} else if !verified {
			return nil, fmt.Errorf("bench: GPU round trip of %d bytes is not bit-exact", size)
		}
		if crossCheck && v == "" {
			frame := make([]byte, h.FrameLen())
			if err := b.s.CopyDtoH(frame, dst[0]); err != nil {
				return nil, err
			}
			enc, err := codec.NewEncoder()
			if err != nil {
				return nil, err
			}
			want, err := enc.EncodeWith(nil, host, cb)
			if err != nil {
				return nil, err
			}
			if !bytes.Equal(want, frame) {
				return nil, fmt.Errorf("bench: GPU frame of %d bytes differs from the CPU frame", size)
			}
		}
		row := BenchRow{
			What: "dense", Size: size, Variant: v,
			Encode: float64(size) / encMs / 1e6, Decode: float64(size) / decMs / 1e6,
			Copy: copyRate, SMCopy: b.smCopy, Roofline: copyRate * 2 / 3.5, Ratio: h.Ratio(), Escapes: h.Escapes, Verified: verified,
			EncodeIdle: encIdle,
		}
		b.logf("dense %d MiB %s: encode %.0f GB/s, decode %.0f GB/s", size>>20, v, row.Encode, row.Decode)
		rows = append(rows, row)
	}
	return rows, nil
}

// paged times a Llama-3-8B request (32 layers, 8 KV heads, head_dim 128, 16-token blocks) of 2,048 tokens
// (256 MiB of K and V) in a cache of 256 blocks per layer, FlashAttention layout.
func (b *benchEnv) paged(c *Codec, cb *codec.Codebook, kv []byte) ([]BenchRow, error) {
	const layers, heads, dim, blockTokens, numBlocks, reqBlocks = 32, 8, 128, 16, 256, 128
	blockElems := blockTokens * heads * dim
	layerBytes := 2 * 2 * numBlocks * blockElems
	r := rand.New(rand.NewPCG(42, 42))
	host := tileKV(kv, 2*2*reqBlocks*blockElems, 99)
	// Two caches: the sender's and the receiver's.
	var bases, dstBases []byte
	var cacheBufs, dstBufs []cuda.DevicePtr
	for range layers {
		p, err := b.alloc(layerBytes)
		if err != nil {
			return nil, err
		}
		q, err := b.alloc(layerBytes)
		if err != nil {
			return nil, err
		}
		cacheBufs, dstBufs = append(cacheBufs, p), append(dstBufs, q)
		bases = binary.LittleEndian.AppendUint64(bases, uint64(p))
		bases = binary.LittleEndian.AppendUint64(bases, uint64(p.Add(2*numBlocks*blockElems)))
		dstBases = binary.LittleEndian.AppendUint64(dstBases, uint64(q))
		dstBases = binary.LittleEndian.AppendUint64(dstBases, uint64(q.Add(2*numBlocks*blockElems)))
	}
	srcIDs := r.Perm(numBlocks)[:reqBlocks]
	dstIDs := r.Perm(numBlocks)[:reqBlocks]
	for l, p := range cacheBufs {
		for kvi := range 2 {
			for i, id := range srcIDs {
				blk := host[2*(kvi*reqBlocks+i)*blockElems : 2*(kvi*reqBlocks+i+1)*blockElems]
				blk = blk[:len(blk):len(blk)]
				if l%2 == 1 { // vary layers a little
					blk = tileKV(blk, len(blk), uint64(l))
				}
				if err := b.s.CopyHtoD(p.Add(2*(kvi*numBlocks+id)*blockElems), blk); err != nil {
					return nil, err
				}
			}
		}
	}
	basesDev, err := b.alloc(len(bases))
	if err != nil {
		return nil, err
	}
	if err := b.s.CopyHtoD(basesDev, bases); err != nil {
		return nil, err
	}
	dstBasesDev, err := b.alloc(len(dstBases))
	if err != nil {
		return nil, err
	}
	if err := b.s.CopyHtoD(dstBasesDev, dstBases); err != nil {
		return nil, err
	}
	srcIDsDev, _ := b.alloc(4 * reqBlocks)
	dstIDsDev, _ := b.alloc(4 * reqBlocks)
	if err := b.s.CopyHtoD(srcIDsDev, int32Bytes(srcIDs)); err != nil {
		return nil, err
	}
	if err := b.s.CopyHtoD(dstIDsDev, int32Bytes(dstIDs)); err != nil {
		return nil, err
	}
	layout := PagedLayout{Bases: basesDev, Layers: layers, BlockElems: blockElems, BlockStride: blockElems}
	dstLayout := layout
	dstLayout.Bases = dstBasesDev
	var rows []BenchRow
	for _, perLayer := range []bool{false, true} {
		req := PagedRequest{BlockIDs: srcIDsDev, NumBlocks: reqBlocks, PerLayer: perLayer}
		dreq := PagedRequest{BlockIDs: dstIDsDev, NumBlocks: reqBlocks, PerLayer: perLayer}
		frames, elems := layout.Frames(req)
		stride := layout.FrameStride(req)
		dst, err := b.alloc(frames * stride)
		if err != nil {
			return nil, err
		}
		sizes, _ := b.alloc(8 * frames)
		status, _ := b.alloc(16)
		ws, err := b.alloc(layout.GatherEncodeWorkspaceSize(req))
		if err != nil {
			return nil, err
		}
		raw := frames * 2 * elems
		encMs, err := b.median(func(int) error { return c.GatherEncodeAsync(b.s, layout, req, cb, dst, sizes, ws) })
		if err != nil {
			return nil, err
		}
		decMs, err := b.median(func(int) error {
			return c.DecodeScatterAsync(b.s, dst, stride, stride, dstLayout, dreq, status)
		})
		if err != nil {
			return nil, err
		}
		st := make([]byte, 4)
		if err := b.s.CopyDtoH(st, status); err != nil {
			return nil, err
		}
		if err := StatusError(binary.LittleEndian.Uint32(st)); err != nil {
			return nil, err
		}
		// Every scattered block equals its source block.
		a := make([]byte, 2*blockElems)
		z := make([]byte, 2*blockElems)
		for l := range layers {
			for kvi := range 2 {
				for i := range reqBlocks {
					if err := b.s.CopyDtoH(a, cacheBufs[l].Add(2*(kvi*numBlocks+srcIDs[i])*blockElems)); err != nil {
						return nil, err
					}
					if err := b.s.CopyDtoH(z, dstBufs[l].Add(2*(kvi*numBlocks+dstIDs[i])*blockElems)); err != nil {
						return nil, err
					}
					if !bytes.Equal(a, z) {
						return nil, fmt.Errorf("bench: paged round trip is not bit-exact (layer %d, kv %d, block %d)", l, kvi, i)
					}
				}
			}
		}
		lens := make([]byte, 8*frames)
		if err := b.s.CopyDtoH(lens, sizes); err != nil {
			return nil, err
		}
		var total uint64
		for f := range frames {
			total += binary.LittleEndian.Uint64(lens[8*f:])
		}
		what := "paged-1frame"
		if perLayer {
			what = "paged-per-layer"
		}
		row := BenchRow{What: what, Size: raw, Encode: float64(raw) / encMs / 1e6,
			Decode: float64(raw) / decMs / 1e6, Ratio: float64(raw) / float64(total), Verified: true}
		b.logf("%s %d MiB: encode %.0f GB/s, decode %.0f GB/s", what, raw>>20, row.Encode, row.Decode)
		rows = append(rows, row)
	}
	return rows, nil
}

func int32Bytes(ids []int) []byte {
	b := make([]byte, 0, 4*len(ids))
	for _, id := range ids {
		b = binary.LittleEndian.AppendUint32(b, uint32(id))
	}
	return b
}

// small times one encode and one decode of size bytes (µs, median) against an empty kernel launch plus a
// device-to-device copy of the same size.
func (b *benchEnv) small(c *Codec, cb *codec.Codebook, kv []byte, size int) (BenchRow, error) {
	b.hold = false // latency: the launch counts
	defer func() { b.hold = true }()
	host := tileKV(kv, size, 7)
	src, _ := b.alloc(size)
	dst, _ := b.alloc(MaxEncodedLen(size))
	out, _ := b.alloc(size)
	sizeOut, _ := b.alloc(16)
	status, _ := b.alloc(16)
	ws, _ := b.alloc(EncodeWorkspaceSize(size))
	if err := b.s.CopyHtoD(src, host); err != nil {
		return BenchRow{}, err
	}
	base, err := b.median(func(int) error {
		if err := c.LaunchNoop(b.s); err != nil {
			return err
		}
		return b.s.MemcpyDtoDAsync(out, src, size)
	})
	if err != nil {
		return BenchRow{}, err
	}
	enc, err := b.median(func(int) error { return c.EncodeAsync(b.s, src, size, cb, dst, sizeOut, ws) })
	if err != nil {
		return BenchRow{}, err
	}
	dec, err := b.median(func(int) error { return c.DecodeAsync(b.s, dst, MaxEncodedLen(size), out, size, status) })
	if err != nil {
		return BenchRow{}, err
	}
	got := make([]byte, size)
	if err := b.s.CopyDtoH(got, out); err != nil {
		return BenchRow{}, err
	}
	if !bytes.Equal(got, host) {
		return BenchRow{}, errors.New("bench: small round trip is not bit-exact")
	}
	hdr := make([]byte, 64)
	if err := b.s.CopyDtoH(hdr, dst); err != nil {
		return BenchRow{}, err
	}
	h, err := codec.ParseHeader(hdr)
	if err != nil {
		return BenchRow{}, err
	}
	b.logf("small %d KiB: encode %.1f µs, decode %.1f µs, launch+copy %.1f µs", size>>10, enc*1e3, dec*1e3, base*1e3)
	return BenchRow{What: "small", Size: size, Encode: enc * 1e3, Decode: dec * 1e3, Copy: base * 1e3,
		Ratio: h.Ratio(), Escapes: h.Escapes, Verified: true}, nil
}

func humanSize(n int) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20:
		return fmt.Sprintf("%d MiB", n>>20)
	default:
		return fmt.Sprintf("%d KiB", n>>10)
	}
}

// Table formats the report as Markdown tables.
func (r *BenchReport) Table() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "GPU: %s (driver CUDA %d.%d); default kernels: %s PTX\n\n", r.Card, r.Driver/1000, r.Driver%1000/10,
		map[bool]string{true: "sm_90 (programmatic dependent launch)", false: "sm_80"}[r.DependentLaunch])
	sb.WriteString("| input | size | kernels | encode GB/s | decode GB/s | D2D copy GB/s | SM copy kernel GB/s | roofline GB/s | encode % roofline | decode % roofline | ratio | escapes |\n")
	sb.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, row := range r.Rows {
		if row.What != "dense" {
			continue
		}
		v := row.Variant
		if v == "" {
			v = "default (" + DefaultEncodeKernels + "/" + DefaultDecodeKernels + ")"
		}
		fmt.Fprintf(&sb, "| real-KV-like bf16 | %s | %s | %.0f | %.0f | %.0f | %.0f | %.0f | %.1f | %.1f | %.4f | %d |\n",
			humanSize(row.Size), v, row.Encode, row.Decode, row.Copy, row.SMCopy, row.Roofline,
			100*row.Encode/row.Roofline, 100*row.Decode/row.Roofline, row.Ratio, row.Escapes)
	}
	fmt.Fprintf(&sb, "\nDense and paged rows: each timed operation queued behind a %v spin kernel, so the window holds the GPU's\n"+
		"time and not the host's launch latency. The default encode timed from an idle stream instead (launch in the window):", holdTime)
	for _, row := range r.Rows {
		if row.What == "dense" && row.Variant == "" {
			fmt.Fprintf(&sb, " %s %.0f GB/s;", humanSize(row.Size), row.EncodeIdle)
		}
	}
	sb.WriteString(" small inputs: from an idle stream.\n")
	var denseEnc, denseDec float64
	for _, row := range r.Rows {
		if row.What == "dense" && row.Variant == "" && denseEnc == 0 {
			denseEnc, denseDec = row.Encode, row.Decode
		}
	}
	if slices.ContainsFunc(r.Rows, func(x BenchRow) bool { return strings.HasPrefix(x.What, "paged") }) {
		sb.WriteString("\n| paged (Llama-3-8B, 16-token blocks) | size | encode GB/s | decode GB/s | encode % dense | decode % dense | ratio |\n")
		sb.WriteString("|---|---:|---:|---:|---:|---:|---:|\n")
		for _, row := range r.Rows {
			if strings.HasPrefix(row.What, "paged") {
				fmt.Fprintf(&sb, "| %s | %s | %.0f | %.0f | %.1f | %.1f | %.4f |\n", row.What, humanSize(row.Size),
					row.Encode, row.Decode, 100*row.Encode/denseEnc, 100*row.Decode/denseDec, row.Ratio)
			}
		}
	}
	if slices.ContainsFunc(r.Rows, func(x BenchRow) bool { return x.What == "small" }) {
		sb.WriteString("\n| small input | encode µs | decode µs | empty launch + D2D copy µs | ratio |\n")
		sb.WriteString("|---:|---:|---:|---:|---:|\n")
		for _, row := range r.Rows {
			if row.What == "small" {
				fmt.Fprintf(&sb, "| %s | %.1f | %.1f | %.1f | %.4f |\n", humanSize(row.Size), row.Encode, row.Decode, row.Copy, row.Ratio)
			}
		}
	}
	return sb.String()
}
