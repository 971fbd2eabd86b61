package connector

import (
	"time"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/kernels/cuda"
)

// kvCache is where a rank's KV cache lives: host memory (the CPU codec) or a GPU (the CUDA kernels). A save
// or a load gets its own worker state from it, so codec scratch is never shared between requests.
type kvCache interface {
	kvLayout() *Layout
	// saver prepares to encode frames of at most per of blocks; encoders lends a CPU encoder when the path
	// needs one.
	saver(blocks []int, encoders chan *codec.Encoder, per int) (layerSaver, error)
	// loader prepares to decode frames of at most per blocks into blocks; its decode may be called from
	// several goroutines.
	loader(blocks []int, per int) (layerLoader, error)
	// allocStaging returns host memory for frames on their way to or from the wire (pinned for a GPU).
	stagingAllocator() allocator
	close() error
}

type layerSaver interface {
	// encode writes blocks [lo, hi) (of the save's) of layer l as one frame into dst (capacity ≥ their
	// MaxEncodedLen) and returns it and where the time went. ready, when set, is work the engine queued that
	// must finish first.
	encode(dst []byte, l, lo, hi int, raw bool, ready *readyMark) (frame []byte, t timing, err error)
	close()
}

// frameChecksummer is a layerSaver that knows the CRC-32C of the frame its last encode returned, computed while
// writing it, which spares the producer another pass over the frame.
type frameChecksummer interface {
	lastCRC() (crc uint32, ok bool)
}

type layerLoader interface {
	// decode checks frame and writes it into blocks [lo, hi) (of the load's) of layer l, returning where the
	// time went.
	decode(frame []byte, l, lo, hi int) (timing, error)
	close()
}

// timing splits a layer's cost: the codec itself, and copies between host and device (GPU caches only).
type timing struct {
	codec, copy time.Duration
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

func (goAllocator) alloc(n int) ([]byte, error) { return make([]byte, n), nil }
func (goAllocator) free([]byte)                 {}

// ---- host memory: the CPU codec ----

func (c *hostCache) kvLayout() *Layout           { return &c.layout }
func (c *hostCache) stagingAllocator() allocator { return goAllocator{} }
func (c *hostCache) close() error                { c.stopHugePages(); return nil }

type hostSaver struct {
	c        *hostCache
	blocks   []int
	encoders chan *codec.Encoder
	segs     [][]byte
	crc      uint32 // of the last coded frame
	crcOK    bool
}

func (s *hostSaver) lastCRC() (uint32, bool) { return s.crc, s.crcOK }

func (c *hostCache) saver(blocks []int, encoders chan *codec.Encoder, _ int) (layerSaver, error) {
	return &hostSaver{c: c, blocks: blocks, encoders: encoders}, nil
}

func (s *hostSaver) encode(dst []byte, l, lo, hi int, raw bool, _ *readyMark) ([]byte, timing, error) {
	n := int(s.c.layout.layerRawBytes(hi - lo))
	s.crcOK = false
	if raw {
		// Bypass: gather the blocks straight behind a raw frame header, one copy in all.
		t0 := time.Now()
		if err := codec.PutRawHeader(dst[:codec.HeaderSize], s.c.layout.DType, n); err != nil {
			return nil, timing{}, err
		}
		s.c.gatherLayer(dst[codec.HeaderSize:codec.HeaderSize+n], l, s.blocks[lo:hi])
		return dst[:codec.HeaderSize+n], timing{copy: time.Since(t0)}, nil
	}
	// The encoder reads the blocks where they lie: no gathered copy of the layer.
	s.segs = s.c.layerSegments(s.segs, l, s.blocks[lo:hi])
	enc := <-s.encoders
	defer func() { s.encoders <- enc }()
	t0 := time.Now()
	frame, crc, err := enc.EncodeSegmentsCRC(dst[:0], s.segs, s.c.layout.DType)
	s.crc, s.crcOK = crc, err == nil
	return frame, timing{codec: time.Since(t0)}, err
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

func (ld *hostLoader) decode(frame []byte, l, lo, hi int) (timing, error) {
	slot := <-ld.slots
	defer func() { ld.slots <- slot }()
	t0 := time.Now()
	n := int(ld.c.layout.layerRawBytes(hi - lo))
	if h, err := codec.ParseHeader(frame); err == nil && h.Raw && len(frame) == codec.HeaderSize+n {
		// A raw frame (bypass): its payload is the blocks' bytes; scatter them without decoding.
		ld.c.scatterLayer(frame[codec.HeaderSize:], l, ld.blocks[lo:hi])
		return timing{copy: time.Since(t0)}, nil
	}
	// Decoded straight into the blocks: no scratch copy of the layer.
	slot.segs = ld.c.layerSegments(slot.segs, l, ld.blocks[lo:hi])
	if _, err := slot.dec.DecodeSegments(slot.segs, frame); err != nil {
		return timing{}, err
	}
	return timing{codec: time.Since(t0)}, nil
}

func (ld *hostLoader) close() {}
