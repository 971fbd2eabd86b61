package gpubench

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/internal/kvtile"
	"github.com/splitzip/splitzip/kernels"
	"github.com/splitzip/splitzip/kernels/cuda"
)

// ErrConfig is returned for a Config RunBench cannot run.
var ErrConfig = errors.New("splitzip: GPU bench configuration")

// Config sets up RunBench.
type Config struct {
	// KV is real bf16 KV data (the evaluation fixture); inputs are tiled from it, with the low mantissa bits
	// of each copy scrambled, so they keep its exponent statistics. Required.
	KV []byte
	// Sizes are the dense input sizes in bytes (default 256 MiB and 1 GiB).
	Sizes []int
	// SmallSizes are timed for latency against a bare launch + copy (default 64 KiB, 256 KiB, 1 MiB, 4 MiB;
	// empty and non-nil: none).
	SmallSizes []int
	// PTX, when set, is a PTX image of the codec's kernels built elsewhere (kernels.WithPTX): its dense and
	// escape sweep rows are timed beside the built-in kernels' at every size and rate, labelled PTXName.
	PTX     []byte
	PTXName string
	// Reps is the number of timed runs per figure (median reported; default 30).
	Reps int
	// SkipPaged leaves out the paged gather-encode / decode-scatter rows (Llama-3-8B shape).
	SkipPaged bool
	// EscapeRates are the escape rates of the escape sweep: the first size coded again, by every codec under
	// test, with the built-in codebook narrowed (its rarest exponents dropped) until at least that fraction of
	// the real KV escapes (default 0.5 %, 2 %, 5 % and 10 %; empty and non-nil: no sweep). Where dropping a
	// whole exponent overshoots the rate, the input is the KV's pieces that escape least, as many as make the
	// rate (escapeMix).
	EscapeRates []float64
	// Log receives progress lines (may be nil).
	Log io.Writer
}

// Row is one line of the table.
type Row struct {
	What     string  // "dense", "escapes" (the sweep), "paged-1frame", "paged-per-layer", "small"
	Size     int     // raw bytes
	Kernels  string  // dense rows: "" for the built-in kernels, else Config.PTXName
	Encode   float64 // GB/s of raw bytes (dense, paged) or µs (small)
	Decode   float64
	Copy     float64 // GB/s read + written (dense) or µs of launch + copy (small)
	SMCopy   float64 // GB/s read + written by a plain 16-byte copy kernel (dense)
	Roofline float64 // GB/s of raw bytes: copy × 2 / 3.5
	Ratio    float64
	Escapes  uint64
}

// Report is RunBench's result.
type Report struct {
	Card   string
	Driver int
	// DependentLaunch: the built-in kernels run the sm_90 build with programmatic dependent launch.
	DependentLaunch bool
	// Precompiled: the built-in kernels were loaded as sm_90 machine code, not JIT-compiled PTX.
	Precompiled bool
	Rows        []Row
}

// holdTime is how long sz_spin holds the stream before a timed op: far longer than queueing the op's
// launches and two events takes the host.
const holdTime = 200 * time.Microsecond

type benchEnv struct {
	ctx    *cuda.Context
	s      *cuda.Stream
	e0, e1 *cuda.Event
	reps   int
	log    io.Writer
	bufs   []*cuda.DeviceBuffer
	times  []float32
	smCopy float64
	// The bench module's kernels (bench.cu).
	noop, copy16, spin *cuda.Function
	// hold queues each timed op behind sz_spin, so the window measures the GPU's time, not the host's launch
	// latency: the throughput rows. The latency rows of small inputs leave it off and include the launch.
	hold bool
}

// bench is one codec under test: the built-in kernels (name "") or Config.PTX's.
type bench struct {
	name  string
	codec *kernels.Codec
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
func (b *benchEnv) median(op func(i int) error) (float64, error) {
	for i := range 2 {
		if err := op(i); err != nil {
			return 0, err
		}
	}
	b.times = b.times[:0]
	for i := range b.reps {
		if b.hold {
			err := b.spin.Launch(b.s, cuda.Dim3{X: 1}, cuda.Dim3{X: 1}, 0, cuda.NewArgs().U64(uint64(holdTime.Nanoseconds())))
			if err != nil {
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

// RunBench measures the GPU codec on ctx's device: dense encode and decode against the device-to-device
// copy bandwidth of the same run, the paged variants, and small-input latency. It checks the results it
// times: every codec's frames equal the CPU encoder's at the first size, and decodes are bit-exact.
func RunBench(ctx *cuda.Context, cfg Config) (*Report, error) {
	if len(cfg.KV) < 2 || len(cfg.KV)%2 != 0 {
		return nil, fmt.Errorf("%w: needs bf16 KV data to tile (%d bytes)", ErrConfig, len(cfg.KV))
	}
	if cfg.Reps < 0 {
		return nil, fmt.Errorf("%w: %d timed runs", ErrConfig, cfg.Reps)
	}
	if cfg.Sizes == nil {
		cfg.Sizes = []int{256 << 20, 1 << 30}
	}
	if cfg.SmallSizes == nil {
		cfg.SmallSizes = []int{64 << 10, 256 << 10, 1 << 20, 4 << 20}
	}
	if cfg.EscapeRates == nil {
		cfg.EscapeRates = []float64{0.005, 0.02, 0.05, 0.10}
	}
	for _, r := range cfg.EscapeRates {
		if !(r > 0 && r < 1) {
			return nil, fmt.Errorf("%w: escape rate %v (want 0 < rate < 1)", ErrConfig, r)
		}
	}
	for _, n := range slices.Concat(cfg.Sizes, cfg.SmallSizes) {
		if n < 16 {
			return nil, fmt.Errorf("%w: input size %d (at least 16 bytes)", ErrConfig, n)
		}
	}
	if cfg.Reps == 0 {
		cfg.Reps = 30
	}
	if cfg.PTX != nil && cfg.PTXName == "" {
		cfg.PTXName = "PTX"
	}
	name, err := ctx.Device().Name()
	if err != nil {
		return nil, err
	}
	drvVer, _ := cuda.DriverVersion()
	rep := &Report{Card: name, Driver: drvVer}
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
	mod, err := ctx.LoadModule(benchPTX)
	if err != nil {
		return nil, fmt.Errorf("splitzip: load the bench's kernels: %w", err)
	}
	defer mod.Close()
	for name, f := range map[string]**cuda.Function{"sz_noop": &b.noop, "sz_copy16": &b.copy16, "sz_spin": &b.spin} {
		if *f, err = mod.Function(name); err != nil {
			return nil, err
		}
	}

	def, err := kernels.NewCodec(ctx)
	if err != nil {
		return nil, err
	}
	defer def.Close()
	rep.DependentLaunch, rep.Precompiled = def.DependentLaunch(), def.Precompiled()
	benches := []bench{{"", def}}
	if cfg.PTX != nil {
		alt, err := kernels.NewCodec(ctx, kernels.WithPTX(cfg.PTX))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", cfg.PTXName, err)
		}
		defer alt.Close()
		b.logf("%s: dependent launch %v", cfg.PTXName, alt.DependentLaunch())
		benches = append(benches, bench{cfg.PTXName, alt})
	}
	cb, err := codec.DefaultCodebook(codec.BF16)
	if err != nil {
		return nil, err
	}

	for si, size := range cfg.Sizes {
		rows, err := b.dense(benches, cb, cfg.KV, size, si == 0)
		if err != nil {
			return rep, err
		}
		rep.Rows = append(rep.Rows, rows...)
	}
	for _, rate := range cfg.EscapeRates {
		narrow, err := narrowCodebook(cfg.KV, cb, rate)
		if err != nil {
			return rep, err
		}
		mixed, err := escapeMix(cfg.KV, narrow, rate)
		if err != nil {
			return rep, err
		}
		rows, err := b.dense(benches, narrow, mixed, cfg.Sizes[0], false)
		if err != nil {
			return rep, err
		}
		for i := range rows {
			rows[i].What = "escapes"
		}
		rep.Rows = append(rep.Rows, rows...)
	}
	if !cfg.SkipPaged {
		rows, err := b.paged(def, cb, cfg.KV)
		if err != nil {
			return rep, err
		}
		rep.Rows = append(rep.Rows, rows...)
	}
	for _, size := range cfg.SmallSizes {
		row, err := b.small(def, cb, cfg.KV, size)
		if err != nil {
			return rep, err
		}
		rep.Rows = append(rep.Rows, row)
	}
	return rep, nil
}

// launchCopy16 enqueues the copy kernel over n bytes (a multiple of 16): 8 blocks per H100 SM.
func (b *benchEnv) launchCopy16(dst, src cuda.DevicePtr, n int) error {
	return b.copy16.Launch(b.s, cuda.Dim3{X: 132 * 8}, cuda.Dim3{X: 256}, 0, cuda.NewArgs().Ptr(src).Ptr(dst).U64(uint64(n/16)))
}

// dense times each codec's encode and decode of size bytes, rotating between two inputs and two outputs (more
// than L2 holds at the default sizes). With crossCheck every codec's frame is compared with the CPU encoder's.
func (b *benchEnv) dense(benches []bench, cb *codec.Codebook, kv []byte, size int, crossCheck bool) ([]Row, error) {
	size &^= 15
	host := kvtile.Tile(kv, size, uint64(size))
	var src, dst, out [2]cuda.DevicePtr
	var err error
	for i := range 2 {
		if src[i], err = b.alloc(size); err != nil {
			return nil, err
		}
		if dst[i], err = b.alloc(kernels.MaxEncodedLen(size)); err != nil {
			return nil, err
		}
		if out[i], err = b.alloc(size); err != nil {
			return nil, err
		}
	}
	sizeOut, _ := b.alloc(16)
	status, _ := b.alloc(16)
	wsLen := kernels.EncodeWorkspaceSize(size)
	ws, err := b.alloc(wsLen)
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
	smMs, err := b.median(func(i int) error { return b.launchCopy16(out[i%2], src[(i+1)%2], size) })
	if err != nil {
		return nil, err
	}
	b.smCopy = 2 * float64(size) / smMs / 1e6
	b.logf("dense %d MiB: copy %.0f GB/s, SM copy kernel %.0f GB/s", size>>20, copyRate, b.smCopy)

	var want []byte
	if crossCheck {
		enc, err := codec.NewEncoder()
		if err != nil {
			return nil, err
		}
		if want, err = enc.EncodeWith(nil, host, cb); err != nil {
			return nil, err
		}
	}
	var rows []Row
	for _, bc := range benches {
		c := bc.codec
		// Every codec starts from a zero workspace.
		if err := b.s.MemsetD8Async(ws, 0, wsLen); err != nil {
			return nil, err
		}
		encMs, err := b.median(func(i int) error { return c.EncodeAsync(b.s, src[i%2], size, cb, dst[i%2], sizeOut, ws) })
		if err != nil {
			return nil, err
		}
		decMs, err := b.median(func(i int) error {
			return c.DecodeAsync(b.s, dst[i%2], kernels.MaxEncodedLen(size), out[i%2], size, status)
		})
		if err != nil {
			return nil, err
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
		if err := kernels.StatusError(binary.LittleEndian.Uint32(st)); err != nil {
			return nil, err
		}
		got := make([]byte, size)
		if err := b.s.CopyDtoH(got, out[0]); err != nil {
			return nil, err
		}
		if !bytes.Equal(got, host) {
			return nil, fmt.Errorf("bench %s: GPU round trip of %d bytes is not bit-exact", bc.label(), size)
		}
		if crossCheck {
			frame := make([]byte, h.FrameLen())
			if err := b.s.CopyDtoH(frame, dst[0]); err != nil {
				return nil, err
			}
			if !bytes.Equal(want, frame) {
				return nil, fmt.Errorf("bench %s: GPU frame of %d bytes differs from the CPU frame", bc.label(), size)
			}
		}
		row := Row{
			What: "dense", Size: size, Kernels: bc.name,
			Encode: float64(size) / encMs / 1e6, Decode: float64(size) / decMs / 1e6,
			Copy: copyRate, SMCopy: b.smCopy, Roofline: copyRate * 2 / 3.5, Ratio: h.Ratio(), Escapes: h.Escapes,
		}
		b.logf("dense %d MiB %s: encode %.0f GB/s, decode %.0f GB/s", size>>20, bc.label(), row.Encode, row.Decode)
		rows = append(rows, row)
	}
	return rows, nil
}

func (bc bench) label() string { return kernelsLabel(bc.name) }

// paged times a Llama-3-8B request (32 layers, 8 KV heads, head_dim 128, 16-token blocks) of 2,048 tokens
// (256 MiB of K and V) in a cache of 256 blocks per layer, FlashAttention layout.
func (b *benchEnv) paged(c *kernels.Codec, cb *codec.Codebook, kv []byte) ([]Row, error) {
	const layers, heads, dim, blockTokens, numBlocks, reqBlocks = 32, 8, 128, 16, 256, 128
	blockElems := blockTokens * heads * dim
	layerBytes := 2 * 2 * numBlocks * blockElems
	r := rand.New(rand.NewPCG(42, 42))
	host := kvtile.Tile(kv, 2*2*reqBlocks*blockElems, 99)
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
					blk = kvtile.Tile(blk, len(blk), uint64(l))
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
	layout := kernels.PagedLayout{Bases: basesDev, Layers: layers, BlockElems: blockElems, BlockStride: blockElems}
	dstLayout := layout
	dstLayout.Bases = dstBasesDev
	var rows []Row
	for _, perLayer := range []bool{false, true} {
		req := kernels.PagedRequest{BlockIDs: srcIDsDev, NumBlocks: reqBlocks, PerLayer: perLayer}
		dreq := kernels.PagedRequest{BlockIDs: dstIDsDev, NumBlocks: reqBlocks, PerLayer: perLayer}
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
		if err := kernels.StatusError(binary.LittleEndian.Uint32(st)); err != nil {
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
		row := Row{What: what, Size: raw, Encode: float64(raw) / encMs / 1e6,
			Decode: float64(raw) / decMs / 1e6, Ratio: float64(raw) / float64(total)}
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
func (b *benchEnv) small(c *kernels.Codec, cb *codec.Codebook, kv []byte, size int) (Row, error) {
	b.hold = false // latency: the launch counts
	defer func() { b.hold = true }()
	size &^= 1
	host := kvtile.Tile(kv, size, 7)
	src, _ := b.alloc(size)
	dst, _ := b.alloc(kernels.MaxEncodedLen(size))
	out, _ := b.alloc(size)
	sizeOut, _ := b.alloc(16)
	status, _ := b.alloc(16)
	ws, _ := b.alloc(kernels.EncodeWorkspaceSize(size))
	if err := b.s.CopyHtoD(src, host); err != nil {
		return Row{}, err
	}
	base, err := b.median(func(int) error {
		if err := b.noop.Launch(b.s, cuda.Dim3{X: 1}, cuda.Dim3{X: 32}, 0, nil); err != nil {
			return err
		}
		return b.s.MemcpyDtoDAsync(out, src, size)
	})
	if err != nil {
		return Row{}, err
	}
	enc, err := b.median(func(int) error { return c.EncodeAsync(b.s, src, size, cb, dst, sizeOut, ws) })
	if err != nil {
		return Row{}, err
	}
	dec, err := b.median(func(int) error {
		return c.DecodeAsync(b.s, dst, kernels.MaxEncodedLen(size), out, size, status)
	})
	if err != nil {
		return Row{}, err
	}
	got := make([]byte, size)
	if err := b.s.CopyDtoH(got, out); err != nil {
		return Row{}, err
	}
	if !bytes.Equal(got, host) {
		return Row{}, errors.New("bench: small round trip is not bit-exact")
	}
	hdr := make([]byte, 64)
	if err := b.s.CopyDtoH(hdr, dst); err != nil {
		return Row{}, err
	}
	h, err := codec.ParseHeader(hdr)
	if err != nil {
		return Row{}, err
	}
	b.logf("small %d KiB: encode %.1f µs, decode %.1f µs, launch+copy %.1f µs", size>>10, enc*1e3, dec*1e3, base*1e3)
	return Row{What: "small", Size: size, Encode: enc * 1e3, Decode: dec * 1e3, Copy: base * 1e3,
		Ratio: h.Ratio(), Escapes: h.Escapes}, nil
}

// narrowCodebook returns cb with its rarest exponents in kv dropped, the fewest that make at least rate of kv's
// elements escape: real KV whose exponents a codebook fits less well, as a model unlike the codebook's gives it.
// NewCodebook fills the freed codes with the lowest exponents cb lacks.
func narrowCodebook(kv []byte, cb *codec.Codebook, rate float64) (*codec.Codebook, error) {
	h, err := codec.NewHistogram(codec.BF16)
	if err != nil {
		return nil, err
	}
	if err := h.Add(kv); err != nil {
		return nil, err
	}
	keep := slices.Clone(cb.Exponents)
	slices.SortStableFunc(keep, func(a, b uint8) int { return -cmpCount(h.Counts[a], h.Counts[b]) })
	escaped := uint64(h.Total) - coveredBy(h, keep)
	for len(keep) > 1 && float64(escaped) < rate*float64(h.Total) {
		last := keep[len(keep)-1]
		keep = keep[:len(keep)-1]
		escaped += h.Counts[last]
	}
	if float64(escaped) < rate*float64(h.Total) {
		return nil, fmt.Errorf("%w: no codebook narrower than the built-in one escapes %.1f %% of this KV", ErrConfig, 100*rate)
	}
	// Free codes get exponents the input lacks, so that they do not take escapes back.
	var seen [256]bool
	for _, e := range cb.Exponents {
		seen[e] = true
	}
	for e := 255; len(keep) < len(cb.Exponents) && e >= 0; e-- {
		if !seen[e] && h.Counts[e] == 0 {
			keep = append(keep, uint8(e))
		}
	}
	return codec.NewCodebook(codec.BF16, int(cb.Bits), keep)
}

// mixPiece is the granularity of escapeMix: a fast-mode chunk of bf16 (4,096 elements).
const mixPiece = 8 << 10

// escapeMix returns kv's mixPiece-byte pieces (in their order) that escape least under cb, as many as bring
// their escapes closest to rate of their elements: real KV at the sweep's rate where dropping whole exponents
// from the codebook overshoots it, its densest pieces left out, as KV that the codebook fits a little better
// than the whole would be. kv itself when it escapes at no more than 5 % over rate, or has fewer than 16 pieces.
func escapeMix(kv []byte, cb *codec.Codebook, rate float64) ([]byte, error) {
	pieces := len(kv) / mixPiece
	if pieces < 16 {
		return kv, nil
	}
	esc := make([]int, pieces)
	total := 0
	for i := range esc {
		h, err := codec.NewHistogram(codec.BF16)
		if err != nil {
			return nil, err
		}
		if err := h.Add(kv[i*mixPiece : (i+1)*mixPiece]); err != nil {
			return nil, err
		}
		esc[i] = int(h.Total - coveredBy(h, cb.Exponents))
		total += esc[i]
	}
	const elems = mixPiece / 2
	if float64(total) <= 1.05*rate*float64(pieces*elems) {
		return kv, nil
	}
	order := make([]int, pieces)
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return esc[a] - esc[b] })
	// The prefix's rate grows with its length: take the length whose rate is closest to rate.
	best, bestErr, sum := pieces, math.Inf(1), 0
	for m := 1; m <= pieces; m++ {
		sum += esc[order[m-1]]
		if d := math.Abs(float64(sum)/float64(m*elems) - rate); d < bestErr {
			best, bestErr = m, d
		}
	}
	keep := slices.Clone(order[:best])
	slices.Sort(keep)
	out := make([]byte, 0, best*mixPiece)
	for _, i := range keep {
		out = append(out, kv[i*mixPiece:(i+1)*mixPiece]...)
	}
	return out, nil
}

func cmpCount(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// coveredBy counts the elements of h whose exponent is in exps.
func coveredBy(h *codec.Histogram, exps []uint8) uint64 {
	var n uint64
	for _, e := range exps {
		n += h.Counts[e]
	}
	return n
}
