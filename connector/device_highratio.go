package connector

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/kernels"
	"github.com/splitzip/splitzip/kernels/cuda"
)

// Learned tables on the GPU path. The kernels code with the (layer, K/V) tables and per-layer codebooks a host
// cache learns (tables.go), from the same samples: one block in sampleEvery of the frames the learner wants
// (every frame of a layer until its tables are built, then one in resampleEvery), copied to pinned memory on
// the save's stream beside the encode and counted on the host while the frames are copied out. A high-ratio
// chunk is K's frame then V's, each with its table; until a (layer, K/V) has one, its frame is coded with a
// table built from that frame's sample (the kernels take a table, they do not build one; a sample's table
// codes every exponent, ESC for those it missed). A fast frame without a learned codebook uses the
// producer's.

// maxTableBytes bounds a code table as frames carry it (bf16: lo, hi and 257 nibbles).
const maxTableBytes = 256

// hrSaveBufs is what a device save adds for high-ratio chunks, made on its first such chunk.
type hrSaveBufs struct {
	frames     *cuda.DeviceBuffer // K's frame at 0, V's at half
	half       int                // offset of V's frame: a half-chunk's largest frame, 16-byte aligned
	sizes      *cuda.DeviceBuffer // u64 per frame
	ws         *cuda.DeviceBuffer
	tables     *cuda.DeviceBuffer // K's table at 0, V's at maxTableBytes
	tablesHost *cuda.HostBuffer
}

func (b *hrSaveBufs) free() {
	_ = freeJoin(nil, b.frames, b.sizes, b.ws, b.tables)
	if b.tablesHost != nil {
		_ = b.tablesHost.Free()
	}
}

// hrBufs returns the save's high-ratio buffers, allocating them for chunks of at most per blocks (ctx current).
func (s *deviceSaver) hrBufs(per int) (*hrSaveBufs, error) {
	if s.hr != nil {
		return s.hr, nil
	}
	c := s.c
	b := &hrSaveBufs{}
	req := kernels.PagedRequest{BlockIDs: s.ids.Ptr(), NumBlocks: per}
	b.half = (codec.MaxEncodedLen(per*int(c.lay.BlockBytes())) + 15) &^ 15
	err := func() error {
		var err error
		if b.frames, err = c.ctx.Alloc(2 * b.half); err != nil {
			return err
		}
		if b.sizes, err = c.ctx.Alloc(16); err != nil {
			return err
		}
		if b.ws, err = c.ctx.Alloc(max(c.layerOf(0).GatherEncodeKVHighRatioWorkspaceSize(req), 16)); err != nil {
			return err
		}
		if b.tables, err = c.ctx.Alloc(2 * maxTableBytes); err != nil {
			return err
		}
		b.tablesHost, err = c.ctx.HostAlloc(2*maxTableBytes, cuda.HostAllocPortable)
		return err
	}()
	if err != nil {
		b.free()
		return nil, err
	}
	s.hr = b
	return b, nil
}

// sampledBlocks returns which of blocks (a chunk of layer l starting at the save's block lo) feed the tables:
// the host path's choice, and at least one block when the frame needs a table of its own.
func sampledBlocks(l, lo, n int, atLeastOne bool) []int {
	var idx []int
	for i := firstSampled(l, lo); i < n; i += sampleEvery {
		idx = append(idx, i)
	}
	if len(idx) == 0 && atLeastOne && n > 0 {
		idx = append(idx, 0)
	}
	return idx
}

// deviceSamples are sampled blocks of a chunk's K and V, copied to the save's pinned sample buffer.
type deviceSamples struct {
	idx [2][]int // which of the chunk's blocks, per K/V
	at  [2]int   // where each K/V's copies start in the buffer
	buf []byte
	bb  int // bytes per block
	dt  codec.DType
}

// copySamples enqueues on the save's stream the copies of layer l's sampled blocks idx (of the chunk starting
// at the save's block lo) into pinned memory; they are there once the stream is synchronised (ctx current).
func (s *deviceSaver) copySamples(l, lo int, idx [2][]int) (*deviceSamples, error) {
	c := s.c
	bb := int(c.lay.BlockBytes())
	if s.sampleHost == nil {
		var err error
		if s.sampleHost, err = c.ctx.HostAlloc(2*max(1, (s.per+sampleEvery-1)/sampleEvery)*bb, cuda.HostAllocPortable); err != nil {
			return nil, err
		}
	}
	ds := &deviceSamples{idx: idx, buf: s.sampleHost.Bytes(), bb: bb, dt: c.lay.DType}
	pos := 0
	for kv := range 2 {
		ds.at[kv] = pos
		for _, i := range idx[kv] {
			if err := s.stream.MemcpyDtoHAsync(unsafe.Pointer(&ds.buf[pos]), c.blockPtr(l, kv, s.blocks[lo+i]), bb); err != nil {
				return nil, err
			}
			pos += bb
		}
	}
	return ds, nil
}

// histogram counts the copied samples of K (kv 0) or V into h (after the stream's synchronisation).
func (ds *deviceSamples) histogram(kv int, h *codec.Histogram) error {
	*h = codec.Histogram{DType: ds.dt}
	return h.Add(ds.buf[ds.at[kv] : ds.at[kv]+len(ds.idx[kv])*ds.bb])
}

// learn feeds the copied samples to the save's table learner.
func (s *deviceSaver) learn(ds *deviceSamples, l int) error {
	for kv := range 2 {
		if err := ds.histogram(kv, &s.hist); err != nil {
			return err
		}
		s.env.tables.add(l, kv, &s.hist)
	}
	return nil
}

// encodeHighRatio enqueues, on the save's stream, layer l's blocks [lo, hi) as a K frame and a V frame, waits
// for their lengths and queues their copy into out, back to back; it returns the chunk's length and whether
// both frames used learned tables. The caller has recorded t0 (and waited for the engine's event) and records
// t1 after the copy; tEnc is recorded here.
func (s *deviceSaver) encodeHighRatio(out stagingOut, l, lo, hi int) (size int, tabled bool, err error) {
	c, env := s.c, s.env
	b, err := s.hrBufs(s.per)
	if err != nil {
		return 0, false, err
	}
	n := hi - lo
	learning := env.tables.resample(l)
	var tables [2]*codec.CodeTable
	var samples [2][]int
	tabled = true
	for kv := range 2 {
		tables[kv] = env.tables.table(l, kv)
		if learning || tables[kv] == nil {
			samples[kv] = sampledBlocks(l, lo, n, tables[kv] == nil)
		}
	}
	// Sampled blocks go to pinned memory first: a frame without a learned table needs them before its encode.
	ds, err := s.copySamples(l, lo, samples)
	if err != nil {
		return 0, false, err
	}
	// count feeds the samples to the learner and gives each frame without a learned table one built from them.
	counted := false
	count := func() error {
		if counted {
			return nil
		}
		counted = true
		if learning {
			if err := s.learn(ds, l); err != nil {
				return err
			}
		}
		for kv := range 2 {
			if tables[kv] != nil {
				continue
			}
			tabled = false
			if tables[kv] = env.tables.table(l, kv); tables[kv] == nil {
				if err := ds.histogram(kv, &s.hist); err != nil {
					return err
				}
				t, err := s.hist.CodeTable()
				if err != nil {
					return err
				}
				tables[kv] = t
			}
		}
		return nil
	}
	if tables[0] == nil || tables[1] == nil {
		if err := s.stream.Synchronize(); err != nil {
			return 0, false, err
		}
		if err := count(); err != nil {
			return 0, false, err
		}
	}
	th := b.tablesHost.Bytes()
	var tableLen [2]int
	for kv := range 2 {
		t, err := tables[kv].AppendBinary(th[kv*maxTableBytes : kv*maxTableBytes])
		if err != nil {
			return 0, false, err
		}
		tableLen[kv] = len(t)
	}
	if err := s.stream.MemcpyHtoDAsync(b.tables.Ptr(), b.tablesHost.Ptr(), 2*maxTableBytes); err != nil {
		return 0, false, err
	}
	req := kernels.PagedRequest{BlockIDs: s.ids.Ptr().Add(4 * lo), NumBlocks: n}
	for kv := range 2 {
		if err := c.kc.GatherEncodeKVHighRatioDTypeAsync(s.stream, c.lay.DType, c.layerOf(l), req, 0, kv, b.tables.Ptr().Add(kv*maxTableBytes), tableLen[kv],
			b.frames.Ptr().Add(kv*b.half), b.sizes.Ptr().Add(8*kv), b.ws.Ptr()); err != nil {
			return 0, false, err
		}
	}
	if err := s.tEnc.Record(s.stream); err != nil {
		return 0, false, err
	}
	if err := s.stream.MemcpyDtoHAsync(s.sizeHost.Ptr(), b.sizes.Ptr(), 16); err != nil {
		return 0, false, err
	}
	if err := s.stream.Synchronize(); err != nil {
		return 0, false, err
	}
	for kv := range 2 {
		fsize := int(binary.LittleEndian.Uint64(s.sizeHost.Bytes()[8*kv:]))
		if fsize < codec.HeaderSize || fsize > b.half || size+fsize > out.capacity() {
			return 0, false, fmt.Errorf("%w: the GPU encoder reported a %d-byte frame for %d bytes of layer %d", ErrFrame, fsize, n*int(c.lay.BlockBytes()), l)
		}
		if err := out.copyIn(s.stream, size, b.frames.Ptr().Add(kv*b.half), fsize); err != nil {
			return 0, false, err
		}
		size += fsize
	}
	// The learning samples are counted while the frames cross PCIe (the caller synchronises the stream).
	if err := count(); err != nil {
		return 0, false, errors.Join(err, s.stream.Synchronize()) // the staging is not left to copies in flight
	}
	return size, tabled, nil
}

// onGPU says whether the kernels decode a high-ratio chunk's frames into a cache of dtype dt: entropy or raw
// frames of that dtype without a payload checksum (the connector's frames carry none: the transport checks
// each chunk's CRC-32C).
func onGPU(ch chunk, dt codec.DType) bool {
	for _, h := range ch.hdrs[:ch.n] {
		if h.DType != dt || h.Checksum || !(h.Raw || h.Entropy) {
			return false
		}
	}
	return true
}

// decodeHighRatio decodes a high-ratio chunk into layer l's blocks [lo, hi) of the load on the slot's stream:
// both frames to the device in one copy, then K's and V's decode-scatter (sl taken, ctx current).
func (ld *deviceLoader) decodeHighRatio(sl *deviceSlot, ch chunk, l, lo, hi int) (took timing, err error) {
	vAt := (len(ch.frames[0]) + 15) &^ 15
	end := vAt + len(ch.frames[1])
	if end > sl.host.Len() {
		return took, fmt.Errorf("%w: %d bytes of high-ratio frames, at most %d expected", ErrFrame, end, sl.host.Len())
	}
	host := sl.host.Bytes()
	copy(host, ch.frames[0])
	copy(host[vAt:], ch.frames[1])
	if err := sl.t0.Record(sl.stream); err != nil {
		return took, err
	}
	if err := sl.stream.MemcpyHtoDAsync(sl.dev.Ptr(), sl.host.Ptr(), end); err != nil {
		return took, err
	}
	frames := [2]cuda.DevicePtr{sl.dev.Ptr(), sl.dev.Ptr().Add(vAt)}
	return ld.decodeHighRatioAt(sl, frames, [2]int{len(ch.frames[0]), len(ch.frames[1])}, l, lo, hi)
}

// decodeHighRatioAt decode-scatters a high-ratio chunk's K and V frames, of lens bytes at frames in GPU memory
// (16-byte aligned), into layer l's blocks [lo, hi) of the load, after what the slot's stream has queued since
// t0 (the frames' copy, if any); took.copy is that, took.codec the kernels (sl taken, ctx current).
func (ld *deviceLoader) decodeHighRatioAt(sl *deviceSlot, frames [2]cuda.DevicePtr, lens [2]int, l, lo, hi int) (took timing, err error) {
	c := ld.c
	if err := sl.tCopy.Record(sl.stream); err != nil {
		return took, err
	}
	req := kernels.PagedRequest{BlockIDs: ld.ids.Ptr().Add(4 * lo), NumBlocks: hi - lo}
	for kv := range 2 {
		if err := c.kc.DecodeScatterKVHighRatioDTypeAsync(sl.stream, c.lay.DType, frames[kv], lens[kv], c.layerOf(l), req, 0, kv, sl.status.Ptr().Add(4*kv)); err != nil {
			return took, err
		}
	}
	if err := sl.awaitStatus(2); err != nil { // the K and the V frame's
		return took, err
	}
	for kv := range 2 {
		if err := kernels.StatusError(binary.LittleEndian.Uint32(sl.statusHost.Bytes()[4*kv:])); err != nil {
			return took, fmt.Errorf("layer %d %s: %w", l, [2]string{"K", "V"}[kv], err)
		}
	}
	if took.copy, err = cuda.Elapsed(sl.t0, sl.tCopy); err != nil {
		return took, err
	}
	took.codec, err = cuda.Elapsed(sl.tCopy, sl.t1)
	return took, err
}
