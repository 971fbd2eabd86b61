package connector

import (
	"fmt"
	"hash/crc32"
	"time"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/internal/crc32c"
	"github.com/splitzip/splitzip/kernels/cuda"
)

// kvCache is where a rank's KV cache lives: host memory (the CPU codec) or a GPU (the CUDA kernels). A save
// or a load gets its own worker state from it, so codec scratch is never shared between requests.
type kvCache interface {
	kvLayout() *Layout
	// saver prepares to encode frames of at most per blocks, with what env lends.
	saver(blocks []int, env saveEnv, per int) (layerSaver, error)
	// loader prepares to decode frames of at most per blocks into blocks; its decode may be called from
	// several goroutines.
	loader(blocks []int, per int) (layerLoader, error)
	// allocStaging returns host memory for frames on their way to or from the wire (pinned for a GPU).
	stagingAllocator() allocator
	// codes says whether the cache's codec writes path p's frames for its dtype (raw frames always).
	codes(p path) bool
	close() error
}

// saveEnv is what a save borrows from its producer: CPU coders, and the learned code tables.
type saveEnv struct {
	coders chan *coders
	tables *tableLearner
}

type layerSaver interface {
	// encode writes blocks [lo, hi) (of the save's) of layer l as one chunk of path p into dst (capacity ≥
	// chunkCap) and returns it and where the time went; with calibrate it also times a decode of the chunk
	// (timing.decode). ready, when set, is work the engine queued that must finish first.
	encode(dst []byte, l, lo, hi int, p path, calibrate bool, ready *readyMark) (frame []byte, t timing, err error)
	close()
}

// frameChecksummer is a layerSaver that knows the CRC-32C of the frame its last encode returned, computed while
// writing it, which spares the producer another pass over the frame.
type frameChecksummer interface {
	lastCRC() (crc uint32, ok bool)
}

type layerLoader interface {
	// decode writes chunk c (checked against the record by parseChunk) into blocks [lo, hi) (of the
	// load's) of layer l, returning where the time went.
	decode(c chunk, l, lo, hi int) (timing, error)
	close()
}

// timing splits a layer's cost: the codec itself, and copies between host and device (GPU caches only), and
// a decode the producer timed to learn the codec's decode rate (calibration only). tabled says a high-ratio
// chunk was coded with given tables throughout (one pass, no histogram of its own).
type timing struct {
	codec, copy, decode time.Duration
	tabled              bool
}

// coders is what a host save borrows to encode one chunk: an encoder per codec mode (the high-ratio one made
// on first use), a decoder for calibration, and scratch for gathers, calibration decodes and table samples.
type coders struct {
	fast, high *codec.Encoder
	dec        *codec.Decoder
	scratch    []byte
	hist       codec.Histogram
	sampled    [][]byte // the blocks a sample counts
}

func newCoders(cb *codec.Codebook) (*coders, error) {
	var opts []codec.EOption
	if cb != nil {
		opts = append(opts, codec.WithCodebook(cb))
	}
	enc, err := codec.NewEncoder(opts...)
	if err != nil {
		return nil, err
	}
	return &coders{fast: enc}, nil
}

func (c *coders) highEncoder() (*codec.Encoder, error) {
	if c.high == nil {
		enc, err := codec.NewEncoder(codec.WithMode(codec.ModeHighRatio))
		if err != nil {
			return nil, err
		}
		c.high = enc
	}
	return c.high, nil
}

func (c *coders) decoder() (*codec.Decoder, error) {
	if c.dec == nil {
		dec, err := codec.NewDecoder()
		if err != nil {
			return nil, err
		}
		c.dec = dec
	}
	return c.dec, nil
}

// buf returns n bytes of scratch.
func (c *coders) buf(n int) []byte {
	if cap(c.scratch) < n {
		c.scratch = make([]byte, n)
	}
	return c.scratch[:n]
}

// decodeChunk decodes a chunk of path p into out (its raw K-then-V bytes), for calibration.
func decodeChunk(dec *codec.Decoder, out, frame []byte, p path) error {
	if p != pathHighRatio {
		_, err := dec.DecodeInto(out, frame)
		return err
	}
	k, v, err := codec.SplitFrame(frame)
	if err != nil {
		return err
	}
	if _, err := dec.DecodeInto(out[:len(out)/2], k); err != nil {
		return err
	}
	_, err = dec.DecodeInto(out[len(out)/2:], v)
	return err
}

// readyMark tells a GPU saver when the engine's writes to a layer are done: an event recorded on the
// engine's stream when it called SaveLayerAfter. Host caches have none.
type readyMark struct {
	ctx *cuda.Context
	ev  *cuda.Event
}

func (m *readyMark) close() {
	_ = m.ctx.Do(func() error { return m.ev.Close() })
}

// allocator gives staging buffers their memory: plain Go memory for host caches, pinned memory for GPU ones
// (so copies to and from the device run asynchronously at full PCIe speed).
type allocator interface {
	alloc(n int) ([]byte, error)
	free(b []byte)
}

type goAllocator struct{}

// alloc touches every page of the buffer it makes: fresh memory faults its pages in on first write, and
// otherwise the first frames staged in it would pay for that, slowing the rates the auto policy measures on a
// handoff's frames (a cold first raw handoff measured 1.9 GB/s for a copy that runs at 5 GB/s warm).
func (goAllocator) alloc(n int) ([]byte, error) {
	b := make([]byte, n)
	for i := 0; i < len(b); i += 4096 {
		b[i] = 0
	}
	return b, nil
}

func (goAllocator) free([]byte) {}

// ---- host memory: the CPU codec ----

func (c *hostCache) kvLayout() *Layout           { return &c.layout }
func (c *hostCache) stagingAllocator() allocator { return goAllocator{} }
func (c *hostCache) close() error                { c.stopHugePages(); return nil }

// codes: the CPU codec codes a path's frames where the format codes the dtype in that mode. It would write
// raw frames for the others (fp8_e4m3 in fast mode, integer dtypes in both), which auto would otherwise take
// for compressed frames until measured.
func (c *hostCache) codes(p path) bool {
	switch p {
	case pathFast:
		return c.layout.DType.CodedIn(codec.ModeFast)
	case pathHighRatio:
		return c.layout.DType.CodedIn(codec.ModeHighRatio)
	}
	return true
}

type hostSaver struct {
	c      *hostCache
	blocks []int
	env    saveEnv
	segs   [][]byte
	crc    uint32 // of the last coded frame
	crcOK  bool
}

func (s *hostSaver) lastCRC() (uint32, bool) { return s.crc, s.crcOK }

func (c *hostCache) saver(blocks []int, env saveEnv, _ int) (layerSaver, error) {
	return &hostSaver{c: c, blocks: blocks, env: env}, nil
}

func (s *hostSaver) encode(dst []byte, l, lo, hi int, p path, calibrate bool, _ *readyMark) ([]byte, timing, error) {
	n := int(s.c.layout.layerRawBytes(hi - lo))
	s.crcOK = false
	if p == pathRaw {
		// Bypass: gather the blocks straight behind a raw frame header, one copy in all.
		t0 := time.Now()
		if err := codec.PutRawHeader(dst[:codec.HeaderSize], s.c.layout.DType, n); err != nil {
			return nil, timing{}, err
		}
		s.crc = s.c.gatherLayer(dst[codec.HeaderSize:codec.HeaderSize+n], l, s.blocks[lo:hi], crc32.Checksum(dst[:codec.HeaderSize], castagnoli))
		s.crcOK = true
		return dst[:codec.HeaderSize+n], timing{copy: time.Since(t0)}, nil
	}
	cs := <-s.env.coders
	defer func() { s.env.coders <- cs }()
	t0 := time.Now()
	var frame []byte
	var err error
	var codecTime time.Duration
	tabled := false
	if p == pathFast {
		// The encoder reads the blocks where they lie: no gathered copy of the layer.
		s.segs = s.c.layerSegments(s.segs, l, s.blocks[lo:hi])
		var crc uint32
		cb, sample := s.env.tables.fastCodebook(l)
		if cb != nil {
			frame, crc, err = cs.fast.EncodeSegmentsWithCRC(dst[:0], s.segs, cb)
		} else {
			frame, crc, err = cs.fast.EncodeSegmentsCRC(dst[:0], s.segs, s.c.layout.DType)
		}
		s.crc, s.crcOK = crc, err == nil
		codecTime = time.Since(t0)
		// Sampled outside the codec time: the mode model predicts later handoffs, whose fast frames are
		// sampled one in resampleEvery once the layer is learned.
		for kv := 0; sample && err == nil && kv < 2; kv++ {
			err = s.sample(cs, l, lo, kv, s.blocks[lo:hi])
		}
	} else {
		var crc uint32
		frame, crc, tabled, err = s.encodeHighRatio(cs, dst, l, lo, hi)
		s.crc, s.crcOK = crc, err == nil
		codecTime = time.Since(t0)
	}
	took := timing{codec: codecTime, tabled: tabled}
	if err != nil || !calibrate {
		return frame, took, err
	}
	dec, err := cs.decoder()
	if err != nil {
		return nil, took, err
	}
	out := cs.buf(n)
	t1 := time.Now()
	if err := decodeChunk(dec, out, frame, p); err != nil {
		return nil, took, fmt.Errorf("decoding the frame just encoded: %w", err)
	}
	took.decode = time.Since(t1)
	return frame, took, nil
}

// encodeHighRatio writes a high-ratio chunk: K's frame, then V's, each with its (layer, K/V) table when one
// is learned, else with its own; the encoder reads the blocks where they lie.
func (s *hostSaver) encodeHighRatio(cs *coders, dst []byte, l, lo, hi int) (_ []byte, crc uint32, tabled bool, err error) {
	enc, err := cs.highEncoder()
	if err != nil {
		return nil, 0, false, err
	}
	tabled = true
	dt := s.c.layout.DType
	blocks := s.blocks[lo:hi]
	half := int(s.c.layout.BlockBytes()) * len(blocks)
	pos := 0
	for kv := range 2 {
		out := dst[pos:pos]
		if cap(out) < codec.MaxEncodedLen(half) {
			return nil, 0, false, fmt.Errorf("%w: %d bytes of staging for a %d-byte half chunk", ErrStagingFull, cap(out), half)
		}
		var f []byte
		var fcrc uint32
		s.segs = s.c.kvSegments(s.segs, l, kv, blocks)
		if t := s.env.tables.table(l, kv); t != nil {
			f, fcrc, err = enc.EncodeSegmentsWithTableCRC(out, s.segs, t)
		} else {
			f, fcrc, err = enc.EncodeSegmentsCRC(out, s.segs, dt)
			tabled = false
		}
		if err != nil {
			return nil, 0, false, err
		}
		// The chunk's CRC-32C from its two frames', each computed as the encoder wrote it.
		crc = crc32c.Combine(crc, fcrc, uint64(len(f)))
		pos += len(f) // in place: out had room for the largest frame
		if s.env.tables.learning() {
			if err := s.sample(cs, l, lo, kv, blocks); err != nil {
				return nil, 0, false, err
			}
		}
	}
	return dst[:pos], crc, tabled, nil
}

// sample adds every sampleEvery-th of blocks (layer l's K or V; lo: where they start in the save), from
// firstSampled on, to the learner's histogram of (l, kv).
func (s *hostSaver) sample(cs *coders, l, lo, kv int, blocks []int) error {
	cs.hist = codec.Histogram{DType: s.c.layout.DType}
	cs.sampled = cs.sampled[:0]
	for i := firstSampled(l, lo); i < len(blocks); i += sampleEvery {
		cs.sampled = append(cs.sampled, s.c.block(l, kv, blocks[i]))
	}
	err := cs.hist.AddSegments(cs.sampled) // counted as one: block by block took twice as long
	clear(cs.sampled)                      // the pooled coders keep no pointer into the cache
	if err != nil {
		return err
	}
	s.env.tables.add(l, kv, &cs.hist)
	return nil
}

func (s *hostSaver) close() {}

type hostLoader struct {
	c      *hostCache
	blocks []int
	slots  chan *decodeSlot
}

// decodeSlot is a decoder with its list of the frame's blocks.
type decodeSlot struct {
	dec  *codec.Decoder
	segs [][]byte
}

// hostDecodeSlots is how many frames of one load a host cache decodes at once (one per connection).
const hostDecodeSlots = 4

func (c *hostCache) loader(blocks []int, _ int) (layerLoader, error) {
	ld := &hostLoader{c: c, blocks: blocks, slots: make(chan *decodeSlot, hostDecodeSlots)}
	for range hostDecodeSlots {
		dec, err := codec.NewDecoder()
		if err != nil {
			return nil, err
		}
		ld.slots <- &decodeSlot{dec: dec}
	}
	return ld, nil
}

func (ld *hostLoader) decode(c chunk, l, lo, hi int) (timing, error) {
	slot := <-ld.slots
	defer func() { ld.slots <- slot }()
	t0 := time.Now()
	blocks := ld.blocks[lo:hi]
	if c.n == 1 {
		if c.hdrs[0].Raw {
			// A raw frame (bypass): its payload is the blocks' bytes; scatter them without decoding.
			ld.c.scatterLayer(c.frames[0][codec.HeaderSize:], l, blocks)
			return timing{copy: time.Since(t0)}, nil
		}
		// Decoded straight into the blocks: no scratch copy of the layer.
		slot.segs = ld.c.layerSegments(slot.segs, l, blocks)
		if _, err := slot.dec.DecodeSegments(slot.segs, c.frames[0]); err != nil {
			return timing{}, err
		}
		return timing{codec: time.Since(t0)}, nil
	}
	for kv := range 2 { // high-ratio: K's frame, then V's
		if c.hdrs[kv].Raw {
			ld.c.scatterKV(c.frames[kv][codec.HeaderSize:], l, kv, blocks)
			continue
		}
		slot.segs = ld.c.kvSegments(slot.segs, l, kv, blocks)
		if _, err := slot.dec.DecodeSegments(slot.segs, c.frames[kv]); err != nil {
			return timing{}, fmt.Errorf("%s: %w", [2]string{"K", "V"}[kv], err)
		}
	}
	return timing{codec: time.Since(t0)}, nil
}

func (ld *hostLoader) close() {}
