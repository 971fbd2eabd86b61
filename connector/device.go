package connector

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"
	"unsafe"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/kernels"
	"github.com/splitzip/splitzip/kernels/cuda"
)

// The GPU path: the KV cache lives in device memory (the engine's tensors). A save gather-encodes a layer's
// blocks straight from the paged cache into a device frame on the connector's own stream (after the engine's
// writes, by an event), learns the frame's length by a small stream-ordered copy, and copies exactly that many
// bytes into pinned staging. A load copies each arriving frame into pinned memory, then to the device, and
// decode-scatters it into the destination blocks. The engine's stream never waits for any of it.

// deviceCache is a rank's KV cache in GPU memory.
type deviceCache struct {
	lay     Layout
	ordinal int // the GPU's CUDA ordinal
	ctx     *cuda.Context
	kc      *kernels.Codec
	cb      *codec.Codebook
	bases   *cuda.DeviceBuffer // 2 × Layers uint64: K of layer 0, V of layer 0, K of layer 1, …
	elems   int                // elements per block
	stride  int                // elements between blocks
	pinned  *pinnedAllocator
	addrs   []cuda.DevicePtr // K base of each layer
	closeMu sync.Once
	slotMu  sync.Mutex
	idle    []*deviceSlot // decode slots kept between loads
}

func newDeviceCache(l Layout, ordinal int, bases []uintptr, cb *codec.Codebook) (*deviceCache, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	if !gpuDType(l.DType) {
		return nil, fmt.Errorf("%w: the GPU path moves bf16 and fp8 (e4m3, e5m2) KV caches; a %s cache must be registered as host memory", ErrLayout, l.DType)
	}
	if len(bases) != l.Layers {
		return nil, fmt.Errorf("%w: %d base addresses for %d layers", ErrLayout, len(bases), l.Layers)
	}
	esz := int64(l.DType.Size())
	if l.BlockBytes()%16 != 0 || l.BlockStride%16 != 0 || l.KVOffset%16 != 0 {
		return nil, fmt.Errorf("%w: the GPU kernels need 16-byte aligned blocks (block %d, stride %d, KV offset %d bytes)", ErrLayout, l.BlockBytes(), l.BlockStride, l.KVOffset)
	}
	ctx, err := cuda.PrimaryContext(ordinal)
	if err != nil {
		return nil, err
	}
	c := &deviceCache{lay: l, ordinal: ordinal, ctx: ctx, cb: cb, elems: int(l.BlockBytes() / esz), stride: int(l.BlockStride / esz)}
	for _, b := range bases {
		c.addrs = append(c.addrs, cuda.DevicePtr(b))
	}
	c.pinned = &pinnedAllocator{ctx: ctx, bufs: map[uintptr]*cuda.HostBuffer{}}
	err = ctx.Do(func() error {
		var err error
		if c.kc, err = kernels.NewCodec(ctx); err != nil {
			return err
		}
		table := make([]byte, 16*l.Layers)
		for i, b := range bases {
			if b%16 != 0 {
				return fmt.Errorf("%w: layer %d base %#x is not 16-byte aligned", ErrLayout, i, b)
			}
			binary.LittleEndian.PutUint64(table[16*i:], uint64(b))
			binary.LittleEndian.PutUint64(table[16*i+8:], uint64(int64(b)+l.KVOffset))
		}
		if c.bases, err = ctx.Alloc(len(table)); err != nil {
			return err
		}
		s, err := ctx.NewStream(cuda.StreamNonBlocking)
		if err != nil {
			return err
		}
		defer s.Close()
		if err := s.CopyHtoD(c.bases.Ptr(), table); err != nil {
			return err
		}
		return s.Synchronize()
	})
	if err != nil {
		return nil, errJoinClose(err, c)
	}
	return c, nil
}

func errJoinClose(err error, c *deviceCache) error {
	if cerr := c.close(); cerr != nil {
		return fmt.Errorf("%w (and closing: %v)", err, cerr)
	}
	return err
}

func (c *deviceCache) kvLayout() *Layout           { return &c.lay }
func (c *deviceCache) stagingAllocator() allocator { return c.pinned }

// gpuDType says whether the GPU path moves caches of dtype dt: bf16 in every mode, fp8 as raw or high-ratio
// frames.
func gpuDType(dt codec.DType) bool {
	return dt == codec.BF16 || dt == codec.FP8E4M3 || dt == codec.FP8E5M2
}

// codes: the fast kernels code bf16 only. fp8_e4m3 has no fast code in the format at all (its exponent is
// already 4 bits), and fp8_e5m2's gains little (5 bits to 4): their handoffs are raw or high-ratio.
func (c *deviceCache) codes(p path) bool {
	return p != pathFast || c.lay.DType == codec.BF16 // every GPU dtype is coded in the high-ratio mode
}

func (c *deviceCache) close() error {
	var err error
	c.closeMu.Do(func() {
		err = c.ctx.Do(func() error {
			c.slotMu.Lock()
			for _, sl := range c.idle {
				sl.free()
			}
			c.idle = nil
			c.slotMu.Unlock()
			var errs []error
			if c.bases != nil {
				errs = append(errs, c.bases.Free())
			}
			if c.kc != nil {
				errs = append(errs, c.kc.Close())
			}
			for _, e := range errs {
				if e != nil {
					return e
				}
			}
			return nil
		})
	})
	return err
}

// layerOf is the paged layout of one layer: the kernels see a one-layer cache.
func (c *deviceCache) layerOf(l int) kernels.PagedLayout {
	return kernels.PagedLayout{Bases: c.bases.Ptr().Add(16 * l), Layers: 1, BlockElems: c.elems, BlockStride: c.stride}
}

// uploadIDs copies block ids to a new device array.
func (c *deviceCache) uploadIDs(s *cuda.Stream, blocks []int) (*cuda.DeviceBuffer, error) {
	ids := make([]byte, 4*len(blocks))
	for i, b := range blocks {
		binary.LittleEndian.PutUint32(ids[4*i:], uint32(b))
	}
	buf, err := c.ctx.Alloc(len(ids))
	if err != nil {
		return nil, err
	}
	if err := s.CopyHtoD(buf.Ptr(), ids); err != nil {
		return nil, freeJoin(err, buf)
	}
	return buf, nil
}

func freeJoin(err error, bufs ...*cuda.DeviceBuffer) error {
	for _, b := range bufs {
		if b != nil {
			_ = b.Free()
		}
	}
	return err
}

// ---- save ----

type deviceSaver struct {
	c          *deviceCache
	blocks     []int
	stream     *cuda.Stream
	ids        *cuda.DeviceBuffer
	frame      *cuda.DeviceBuffer
	sizes      *cuda.DeviceBuffer
	ws         *cuda.DeviceBuffer
	sizeHost   *cuda.HostBuffer // frame lengths: 2 × u64
	headHost   *cuda.HostBuffer // a raw frame's header on its way to GPU staging; headers read back from it
	t0, tEnc   *cuda.Event      // codec time: t0 → tEnc; copy to staging: tEnc → t1
	t1         *cuda.Event
	env        saveEnv          // the learned code tables and codebooks
	per        int              // most blocks in a chunk
	hr         *hrSaveBufs      // high-ratio chunks' buffers, made on the first
	sampleHost *cuda.HostBuffer // sampled blocks for the learner (made on first use)
	hist       codec.Histogram
}

func (c *deviceCache) saver(blocks []int, env saveEnv, per int) (layerSaver, error) {
	s := &deviceSaver{c: c, blocks: blocks, env: env, per: per}
	err := c.ctx.Do(func() error {
		var err error
		if s.stream, err = c.ctx.NewStream(cuda.StreamNonBlocking); err != nil {
			return err
		}
		if s.ids, err = c.uploadIDs(s.stream, blocks); err != nil {
			return err
		}
		pl := c.layerOf(0)
		req := kernels.PagedRequest{BlockIDs: s.ids.Ptr(), NumBlocks: per, PerLayer: true}
		if s.frame, err = c.ctx.Alloc(pl.FrameStride(req)); err != nil {
			return err
		}
		if s.sizes, err = c.ctx.Alloc(8); err != nil {
			return err
		}
		wsLen := max(pl.GatherEncodeWorkspaceSize(req), 16)
		if s.ws, err = c.ctx.Alloc(wsLen); err != nil {
			return err
		}
		// Zero once: the encoder leaves it ready for each next layer (kernels.EncodeWorkspaceSize).
		if err = s.stream.MemsetD8Async(s.ws.Ptr(), 0, wsLen); err != nil {
			return err
		}
		if s.sizeHost, err = c.ctx.HostAlloc(16, cuda.HostAllocPortable); err != nil {
			return err
		}
		if s.headHost, err = c.ctx.HostAlloc(2*codec.HeaderSize, cuda.HostAllocPortable); err != nil {
			return err
		}
		for _, e := range []**cuda.Event{&s.t0, &s.tEnc, &s.t1} {
			if *e, err = c.ctx.NewEvent(cuda.EventDefault); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

func (s *deviceSaver) encode(dst []byte, l, lo, hi int, p path, _ bool, ready *readyMark) (frame []byte, took timing, err error) {
	n, took, err := s.encodeTo(stagingOut{host: dst}, l, lo, hi, p, ready)
	if err != nil {
		return nil, took, err
	}
	return dst[:n], took, nil
}

// stagingOut is where a device saver leaves a chunk: host staging (host), or staging in GPU memory (dev, of
// cap bytes) that NIXL serves in place.
type stagingOut struct {
	host []byte
	dev  cuda.DevicePtr
	cap  int
}

func (o stagingOut) capacity() int {
	if o.dev != 0 {
		return o.cap
	}
	return cap(o.host)
}

// copyIn enqueues the copy of size bytes at src in GPU memory to offset at of the staging.
func (o stagingOut) copyIn(st *cuda.Stream, at int, src cuda.DevicePtr, size int) error {
	if o.dev != 0 {
		return st.MemcpyDtoDAsync(o.dev.Add(at), src, size)
	}
	return st.MemcpyDtoHAsync(unsafe.Pointer(&o.host[:at+1][at]), src, size)
}

// encodeTo encodes layer l's blocks [lo, hi) as one chunk of path p into out and returns its length.
func (s *deviceSaver) encodeTo(out stagingOut, l, lo, hi int, p path, ready *readyMark) (size int, took timing, err error) {
	c := s.c
	n := int(c.lay.layerRawBytes(hi - lo))
	err = c.ctx.Do(func() error {
		if ready != nil {
			if err := s.stream.WaitEvent(ready.ev); err != nil {
				return err
			}
		}
		if err := s.t0.Record(s.stream); err != nil {
			return err
		}
		switch p {
		case pathHighRatio:
			var err error
			if size, took.tabled, err = s.encodeHighRatio(out, l, lo, hi); err != nil {
				return err
			}
		case pathRaw:
			if err := s.tEnc.Record(s.stream); err != nil { // no codec work
				return err
			}
			// Bypass: the blocks go to staging as they are, behind a raw frame header.
			size = codec.HeaderSize + n
			if size > out.capacity() {
				return fmt.Errorf("%w: a %d-byte raw frame in %d bytes of staging", ErrFrame, size, out.capacity())
			}
			head := s.headHost.Bytes()[:codec.HeaderSize]
			if out.dev == 0 {
				head = out.host[:codec.HeaderSize]
			}
			if err := codec.PutRawHeader(head, c.lay.DType, n); err != nil {
				return err
			}
			if out.dev != 0 {
				if err := s.stream.MemcpyHtoDAsync(out.dev, s.headHost.Ptr(), codec.HeaderSize); err != nil {
					return err
				}
			}
			if err := s.copyRaw(out, l, lo, hi, n); err != nil {
				return err
			}
		default:
			cb, sample := s.env.tables.fastCodebook(l)
			if cb == nil {
				cb = c.cb
			}
			// Into GPU staging the encoder writes the frame in place; for host staging it is copied there.
			frameAt := s.frame.Ptr()
			if out.dev != 0 {
				if out.cap < kernels.MaxEncodedLen(n) {
					return fmt.Errorf("%w: %d bytes of staging for a frame of up to %d", ErrFrame, out.cap, kernels.MaxEncodedLen(n))
				}
				frameAt = out.dev
			}
			req := kernels.PagedRequest{BlockIDs: s.ids.Ptr().Add(4 * lo), NumBlocks: hi - lo, PerLayer: true}
			if err := c.kc.GatherEncodeAsync(s.stream, c.layerOf(l), req, cb, frameAt, s.sizes.Ptr(), s.ws.Ptr()); err != nil {
				return err
			}
			if err := s.tEnc.Record(s.stream); err != nil {
				return err
			}
			var ds *deviceSamples
			if sample { // counted below, once the frame's copy is queued
				var err error
				idx := sampledBlocks(l, lo, hi-lo, false)
				if ds, err = s.copySamples(l, lo, [2][]int{idx, idx}); err != nil {
					return err
				}
			}
			if err := s.stream.MemcpyDtoHAsync(s.sizeHost.Ptr(), s.sizes.Ptr(), 8); err != nil {
				return err
			}
			// The frame's length decides how much crosses PCIe: wait for it (this goroutine only; the
			// engine's stream is not involved).
			if err := s.stream.Synchronize(); err != nil {
				return err
			}
			size = int(binary.LittleEndian.Uint64(s.sizeHost.Bytes()))
			if size < codec.HeaderSize || size > out.capacity() {
				return fmt.Errorf("%w: the GPU encoder reported a %d-byte frame for %d bytes", ErrFrame, size, n)
			}
			if out.dev == 0 {
				if err := out.copyIn(s.stream, 0, s.frame.Ptr(), size); err != nil {
					return err
				}
			}
			if ds != nil { // counted while the frame crosses PCIe
				if err := s.learn(ds, l); err != nil {
					return errors.Join(err, s.stream.Synchronize())
				}
			}
		}
		if err := s.t1.Record(s.stream); err != nil {
			return err
		}
		if err := s.stream.Synchronize(); err != nil {
			return err
		}
		if took.codec, err = cuda.Elapsed(s.t0, s.tEnc); err != nil {
			return err
		}
		took.copy, err = cuda.Elapsed(s.tEnc, s.t1)
		return err
	})
	return size, took, err
}

// copyRaw enqueues the copy of layer l's blocks [lo, hi) (n bytes: K blocks, then V blocks) behind a raw
// frame's header in out. One gather kernel writes them: into GPU staging in place, or into the frame buffer and
// from there to host staging in one copy. One copy a block instead, whose enqueue costs more than the copy
// itself, only where the cache's blocks are not 16-byte aligned for the kernel (ctx current).
func (s *deviceSaver) copyRaw(out stagingOut, l, lo, hi, n int) error {
	c := s.c
	at := out.dev.Add(codec.HeaderSize)
	if out.dev == 0 {
		at = s.frame.Ptr()
	}
	if out.dev != 0 || n <= s.frame.Len() {
		req := kernels.PagedRequest{BlockIDs: s.ids.Ptr().Add(4 * lo), NumBlocks: hi - lo}
		err := c.kc.GatherBlocksAsync(s.stream, c.lay.DType, c.layerOf(l), req, at)
		if err == nil && out.dev == 0 {
			err = out.copyIn(s.stream, codec.HeaderSize, at, n)
		}
		if !errors.Is(err, kernels.ErrAlignment) {
			return err
		}
	}
	bb := int(c.lay.BlockBytes())
	pos := codec.HeaderSize
	for kv := range 2 {
		for _, b := range s.blocks[lo:hi] {
			if err := out.copyIn(s.stream, pos, c.blockPtr(l, kv, b), bb); err != nil {
				return err
			}
			pos += bb
		}
	}
	return nil
}

// blockPtr is the device address of block b of layer l's K (kv 0) or V (kv 1).
func (c *deviceCache) blockPtr(l, kv, b int) cuda.DevicePtr {
	return c.addrs[l].Add(int(int64(kv)*c.lay.KVOffset + int64(b)*c.lay.BlockStride))
}

func (s *deviceSaver) close() {
	_ = s.c.ctx.Do(func() error {
		if s.stream != nil {
			_ = s.stream.Synchronize()
			_ = s.stream.Close()
		}
		_ = freeJoin(nil, s.ids, s.frame, s.sizes, s.ws)
		if s.hr != nil {
			s.hr.free()
		}
		for _, h := range []*cuda.HostBuffer{s.sampleHost, s.sizeHost, s.headHost} {
			if h != nil {
				_ = h.Free()
			}
		}
		for _, e := range []*cuda.Event{s.t0, s.tEnc, s.t1} {
			if e != nil {
				_ = e.Close()
			}
		}
		return nil
	})
}

// ---- load ----

type deviceLoader struct {
	c      *deviceCache
	blocks []int
	ids    *cuda.DeviceBuffer
	slots  chan *deviceSlot
	taken  []*deviceSlot
}

// deviceSlot decodes one frame at a time: pinned copy, upload, decode-scatter, status. Slots are kept by the
// cache between loads: their pinned and device buffers are costly to allocate.
type deviceSlot struct {
	cpu           *codec.Decoder // high-ratio chunks, decoded on the CPU (made on first use)
	stream        *cuda.Stream
	host          *cuda.HostBuffer
	dev           *cuda.DeviceBuffer
	status        *cuda.DeviceBuffer
	statusHost    *cuda.HostBuffer
	t0, tCopy, t1 *cuda.Event // copy: t0 → tCopy; decode: tCopy → t1
}

// deviceSlots is how many frames of one load a GPU cache decodes at once (one per connection).
const deviceSlots = 4

// getSlot returns an idle slot whose buffers hold frameCap bytes (ctx current).
func (c *deviceCache) getSlot(frameCap int) (*deviceSlot, error) {
	c.slotMu.Lock()
	for i, sl := range c.idle {
		if sl.host.Len() >= frameCap {
			c.idle = append(c.idle[:i], c.idle[i+1:]...)
			c.slotMu.Unlock()
			return sl, nil
		}
	}
	c.slotMu.Unlock()
	sl := &deviceSlot{}
	err := func() error {
		var err error
		if sl.stream, err = c.ctx.NewStream(cuda.StreamNonBlocking); err != nil {
			return err
		}
		if sl.host, err = c.ctx.HostAlloc(frameCap, cuda.HostAllocPortable); err != nil {
			return err
		}
		if sl.dev, err = c.ctx.Alloc(frameCap); err != nil {
			return err
		}
		if sl.status, err = c.ctx.Alloc(16); err != nil {
			return err
		}
		if sl.statusHost, err = c.ctx.HostAlloc(16, cuda.HostAllocPortable); err != nil {
			return err
		}
		for _, e := range []**cuda.Event{&sl.t0, &sl.tCopy, &sl.t1} {
			if *e, err = c.ctx.NewEvent(cuda.EventDefault); err != nil {
				return err
			}
		}
		return nil
	}()
	if err != nil {
		sl.free()
		return nil, err
	}
	return sl, nil
}

// putSlots keeps slots for later loads, freeing the smallest beyond deviceSlots × 2 (ctx current).
func (c *deviceCache) putSlots(sls []*deviceSlot) {
	c.slotMu.Lock()
	defer c.slotMu.Unlock()
	c.idle = append(c.idle, sls...)
	for len(c.idle) > 2*deviceSlots {
		small := 0
		for i, sl := range c.idle {
			if sl.host.Len() < c.idle[small].host.Len() {
				small = i
			}
		}
		c.idle[small].free()
		c.idle = append(c.idle[:small], c.idle[small+1:]...)
	}
}

func (sl *deviceSlot) free() {
	if sl.stream != nil {
		_ = sl.stream.Synchronize()
		_ = sl.stream.Close()
	}
	_ = freeJoin(nil, sl.dev, sl.status)
	for _, h := range []*cuda.HostBuffer{sl.host, sl.statusHost} {
		if h != nil {
			_ = h.Free()
		}
	}
	for _, e := range []*cuda.Event{sl.t0, sl.tCopy, sl.t1} {
		if e != nil {
			_ = e.Close()
		}
	}
}

func (c *deviceCache) loader(blocks []int, per int) (layerLoader, error) {
	ld := &deviceLoader{c: c, blocks: blocks, slots: make(chan *deviceSlot, deviceSlots)}
	frameCap := chunkCap(int(c.lay.layerRawBytes(per))) + 16 // a high-ratio V frame starts 16-byte aligned
	err := c.ctx.Do(func() error {
		for range deviceSlots {
			sl, err := c.getSlot(frameCap)
			if err != nil {
				return err
			}
			ld.taken = append(ld.taken, sl)
			ld.slots <- sl
		}
		var err error
		ld.ids, err = c.uploadIDs(ld.taken[0].stream, blocks)
		return err
	})
	if err != nil {
		ld.close()
		return nil, err
	}
	return ld, nil
}

func (ld *deviceLoader) decode(ch chunk, l, lo, hi int) (took timing, err error) {
	sl := <-ld.slots
	defer func() { ld.slots <- sl }()
	return ld.decodeWith(sl, ch, l, lo, hi)
}

// decodeWith decodes a chunk received in host memory into layer l's blocks [lo, hi) of the load: through
// the slot's pinned buffer to the GPU, decoded there, or decoded on the CPU first where the kernels do not
// decode its frames (sl taken).
func (ld *deviceLoader) decodeWith(sl *deviceSlot, ch chunk, l, lo, hi int) (took timing, err error) {
	c := ld.c
	if ch.n == 2 && onGPU(ch, c.lay.DType) {
		err = c.ctx.Do(func() error {
			var err error
			took, err = ld.decodeHighRatio(sl, ch, l, lo, hi)
			return err
		})
		return took, err
	}
	bf16 := c.lay.DType == codec.BF16
	var frameLen int
	if ch.n == 1 && (bf16 || ch.hdrs[0].Raw) {
		frame := ch.frames[0]
		if len(frame) > sl.host.Len() {
			return took, fmt.Errorf("%w: %d-byte frame, at most %d expected", ErrFrame, len(frame), sl.host.Len())
		}
		frameLen = copy(sl.host.Bytes(), frame)
	} else {
		// A chunk the kernels do not decode (high-ratio frames with a payload checksum; fast frames of a
		// dtype other than bf16, from a host-cache producer): the CPU decodes it into pinned memory as one raw
		// frame, which is scattered from there.
		var cpuTime time.Duration
		if frameLen, cpuTime, err = sl.decodeOnCPU(ch, c.lay.DType, int(c.lay.layerRawBytes(hi-lo))); err != nil {
			return took, err
		}
		defer func() { took.codec += cpuTime }()
	}
	err = c.ctx.Do(func() error {
		if !bf16 {
			h, err := codec.ParseHeader(sl.host.Bytes()[:frameLen])
			if err != nil {
				return err
			}
			took, err = ld.scatterRaw(sl, h, frameLen, 0, l, lo, hi)
			return err
		}
		if err := sl.t0.Record(sl.stream); err != nil {
			return err
		}
		if err := sl.stream.MemcpyHtoDAsync(sl.dev.Ptr(), sl.host.Ptr(), frameLen); err != nil {
			return err
		}
		var err error
		took, err = ld.decodeScatterAt(sl, sl.dev.Ptr(), frameLen, l, lo, hi)
		return err
	})
	return took, err
}

// decodeScatterAt decodes the fast or raw bf16 frame of frameLen bytes at src in GPU memory into layer l's
// blocks [lo, hi) of the load, after what the slot's stream has queued since t0 (the frame's copy, if any);
// took.copy is that, took.codec the kernel (sl taken, ctx current).
func (ld *deviceLoader) decodeScatterAt(sl *deviceSlot, src cuda.DevicePtr, frameLen, l, lo, hi int) (took timing, err error) {
	c := ld.c
	if err := sl.tCopy.Record(sl.stream); err != nil {
		return took, err
	}
	req := kernels.PagedRequest{BlockIDs: ld.ids.Ptr().Add(4 * lo), NumBlocks: hi - lo, PerLayer: true}
	stride := (frameLen + 15) &^ 15
	if err := c.kc.DecodeScatterAsync(sl.stream, src, stride, frameLen, c.layerOf(l), req, sl.status.Ptr()); err != nil {
		return took, err
	}
	if err := sl.awaitStatus(1); err != nil {
		return took, err
	}
	if err := kernels.StatusError(binary.LittleEndian.Uint32(sl.statusHost.Bytes())); err != nil {
		return took, err
	}
	if took.copy, err = cuda.Elapsed(sl.t0, sl.tCopy); err != nil {
		return took, err
	}
	took.codec, err = cuda.Elapsed(sl.tCopy, sl.t1)
	return took, err
}

// scatterRaw copies the raw frame of frameLen bytes whose header is h (layer l's K blocks [lo, hi) of the
// load, then its V blocks) straight into the blocks with the scatter kernel: from dev in GPU memory when dev is
// not 0, else from the slot's pinned buffer through its device buffer. The fast kernels that scatter raw frames
// read bf16; this moves any dtype (sl taken, ctx current).
func (ld *deviceLoader) scatterRaw(sl *deviceSlot, h codec.Header, frameLen int, dev cuda.DevicePtr, l, lo, hi int) (took timing, err error) {
	c := ld.c
	bb := int(c.lay.BlockBytes())
	if n := 2 * (hi - lo) * bb; !h.Raw || h.DType != c.lay.DType || int(h.PayloadLen) != n || frameLen != codec.HeaderSize+n {
		return took, fmt.Errorf("%w: a %d-byte %s frame (raw %v) for %d bytes of %s blocks", ErrFrame, frameLen, h.DType, h.Raw, n, c.lay.DType)
	}
	if err := sl.t0.Record(sl.stream); err != nil {
		return took, err
	}
	// One scatter kernel: from dev, or from the slot's device buffer after one copy there.
	src := dev
	if dev == 0 && frameLen <= sl.dev.Len() {
		src = sl.dev.Ptr()
		err = sl.stream.MemcpyHtoDAsync(src, sl.host.Ptr(), frameLen)
	}
	if src != 0 && err == nil {
		req := kernels.PagedRequest{BlockIDs: ld.ids.Ptr().Add(4 * lo), NumBlocks: hi - lo}
		err = c.kc.ScatterBlocksAsync(sl.stream, c.lay.DType, src.Add(codec.HeaderSize), c.layerOf(l), req)
		if err == nil {
			return ld.finishRaw(sl)
		}
	}
	if !errors.Is(err, kernels.ErrAlignment) && err != nil {
		return took, err
	}
	// One copy a block where the cache's blocks are not aligned for the kernel.
	base := unsafe.Pointer(&sl.host.Bytes()[0])
	pos := codec.HeaderSize
	for kv := range 2 {
		for _, b := range ld.blocks[lo:hi] {
			if dev != 0 {
				err = sl.stream.MemcpyDtoDAsync(c.blockPtr(l, kv, b), dev.Add(pos), bb)
			} else {
				err = sl.stream.MemcpyHtoDAsync(c.blockPtr(l, kv, b), unsafe.Add(base, pos), bb)
			}
			if err != nil {
				return took, err
			}
			pos += bb
		}
	}
	return ld.finishRaw(sl)
}

// awaitStatus marks the end of the slot's decode kernels (t1), brings their n status words back to statusHost
// and waits for the slot's stream (sl taken, ctx current).
func (sl *deviceSlot) awaitStatus(n int) error {
	if err := sl.t1.Record(sl.stream); err != nil {
		return err
	}
	if err := sl.stream.MemcpyDtoHAsync(sl.statusHost.Ptr(), sl.status.Ptr(), 4*n); err != nil {
		return err
	}
	return sl.stream.Synchronize()
}

// finishRaw waits for a raw frame's scatter and times it as copy time (sl taken, ctx current).
func (ld *deviceLoader) finishRaw(sl *deviceSlot) (took timing, err error) {
	if err := sl.tCopy.Record(sl.stream); err != nil {
		return took, err
	}
	if err := sl.stream.Synchronize(); err != nil {
		return took, err
	}
	took.copy, err = cuda.Elapsed(sl.t0, sl.tCopy)
	return took, err
}

// decodeOnCPU decodes a chunk of n raw bytes of dtype dt (one frame, or a K and a V frame) into the slot's
// pinned buffer behind a raw frame header and returns that raw frame's length.
func (sl *deviceSlot) decodeOnCPU(ch chunk, dt codec.DType, n int) (int, time.Duration, error) {
	if codec.HeaderSize+n > sl.host.Len() {
		return 0, 0, fmt.Errorf("%w: a %d-byte layer frame, at most %d expected", ErrFrame, n, sl.host.Len()-codec.HeaderSize)
	}
	if sl.cpu == nil {
		dec, err := codec.NewDecoder()
		if err != nil {
			return 0, 0, err
		}
		sl.cpu = dec
	}
	t0 := time.Now()
	buf := sl.host.Bytes()[:codec.HeaderSize+n]
	if err := codec.PutRawHeader(buf[:codec.HeaderSize], dt, n); err != nil {
		return 0, 0, err
	}
	out := buf[codec.HeaderSize:]
	for i := range ch.n {
		if ch.hdrs[i].DType != dt {
			return 0, 0, fmt.Errorf("%w: a %s frame for a %s KV cache", ErrFrame, ch.hdrs[i].DType, dt)
		}
		part := out[i*n/ch.n : (i+1)*n/ch.n]
		if _, err := sl.cpu.DecodeInto(part, ch.frames[i]); err != nil {
			return 0, 0, err
		}
	}
	return len(buf), time.Since(t0), nil
}

func (ld *deviceLoader) close() {
	_ = ld.c.ctx.Do(func() error {
		for _, sl := range ld.taken {
			_ = sl.stream.Synchronize()
		}
		ld.c.putSlots(ld.taken)
		_ = freeJoin(nil, ld.ids)
		return nil
	})
}

// ---- pinned staging ----

// pinnedAllocator hands out page-locked host memory for staging, so device copies run asynchronously.
type pinnedAllocator struct {
	ctx  *cuda.Context
	mu   sync.Mutex
	bufs map[uintptr]*cuda.HostBuffer
}

func (a *pinnedAllocator) alloc(n int) ([]byte, error) {
	var hb *cuda.HostBuffer
	err := a.ctx.Do(func() error {
		var err error
		hb, err = a.ctx.HostAlloc(n, cuda.HostAllocPortable)
		return err
	})
	if err != nil {
		return nil, err
	}
	b := hb.Bytes()
	a.mu.Lock()
	a.bufs[uintptr(unsafe.Pointer(&b[0]))] = hb
	a.mu.Unlock()
	return b, nil
}

func (a *pinnedAllocator) free(b []byte) {
	if cap(b) == 0 {
		return
	}
	key := uintptr(unsafe.Pointer(&b[:1][0]))
	a.mu.Lock()
	hb := a.bufs[key]
	delete(a.bufs, key)
	a.mu.Unlock()
	if hb != nil {
		_ = a.ctx.Do(func() error { return hb.Free() })
	}
}

// ---- registration and layer marks ----

// RegisterDeviceCache tells the producer that the rank's KV cache is in the memory of GPU ordinal (the
// engine's own tensors, in its primary context): one device address per layer's K region, laid out as l
// describes. bf16 caches move in every mode; fp8 (e4m3, e5m2) caches as raw or high-ratio frames (the fast
// kernels code bf16). The CUDA driver is loaded at run time, and a machine without one gets an error wrapping
// cuda.ErrNoDriver.
func (p *Producer) RegisterDeviceCache(l Layout, ordinal int, bases []uintptr) error {
	cb := p.o.Codebook
	if cb == nil {
		var err error
		if cb, err = codec.DefaultCodebook(codec.BF16); err != nil {
			return err
		}
	}
	c, err := newDeviceCache(l, ordinal, bases, cb)
	if err != nil {
		return err
	}
	return p.register(c)
}

// RegisterDeviceCache tells the consumer that its KV cache is in GPU memory (see Producer.RegisterDeviceCache).
// With WithNIXLDeviceReceive, the first registration also gives the NIXL client its GPU receive memory.
func (c *Consumer) RegisterDeviceCache(l Layout, ordinal int, bases []uintptr) error {
	if c.o.NIXLDeviceReceive > 0 && c.nixl != nil {
		if err := c.useDeviceReceive(ordinal); err != nil {
			return err
		}
	}
	dc, err := newDeviceCache(l, ordinal, bases, nil)
	if err != nil {
		return err
	}
	return c.register(dc)
}

// SaveLayerAfter queues layer l of reqID like SaveLayer, for a GPU cache: the encoding waits for the work
// queued so far on the engine's CUDA stream (e.g. torch.cuda.current_stream().cuda_stream; 0 is the legacy
// default stream), and the engine's stream never waits for the encoding.
func (p *Producer) SaveLayerAfter(reqID string, l int, stream uintptr) error {
	p.mu.Lock()
	dc, ok := p.cache.(*deviceCache)
	p.mu.Unlock()
	if !ok {
		return p.SaveLayer(reqID, l)
	}
	var mark *readyMark
	err := dc.ctx.Do(func() error {
		ev, err := dc.ctx.NewEvent(cuda.EventDisableTiming)
		if err != nil {
			return err
		}
		if err := ev.Record(dc.ctx.StreamFromHandle(stream)); err != nil {
			_ = ev.Close()
			return err
		}
		mark = &readyMark{ctx: dc.ctx, ev: ev}
		return nil
	})
	if err != nil {
		return err
	}
	return p.saveLayer(reqID, l, mark)
}
