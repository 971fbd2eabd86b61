package connector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/splitzip/splitzip/connector/nixl"
	"github.com/splitzip/splitzip/connector/transport"
	"github.com/splitzip/splitzip/kernels/cuda"
	szn "github.com/splitzip/splitzip/nats"
)

// Consumer is the decode side of a handoff: it finds the handoff on the control plane, fetches the frames from
// the producer peer-to-peer, decodes each one into its own blocks as it arrives, and reports the request done
// only when every layer arrived, verified and decoded. Anything else ends with the request failed and a clear
// error; blocks of a failed load hold partial data and must not be used (the engine recomputes or fails).
// A Consumer serves one tensor-parallel rank; it is safe for concurrent use.
type Consumer struct {
	o    Options
	cp   ControlPlane
	nixl *nixl.Client // with the payload transport nixl
	recv *gpuRecv     // GPU memory the NIXL client reads chunks into (WithNIXLDeviceReceive)
	log  *slog.Logger

	mu     sync.Mutex
	cache  kvCache
	loads  map[string]*load
	done   []string
	failed []Failure
	stats  ConsumerStats
	closed bool
	wg     sync.WaitGroup
	ctx    context.Context // ends on Close; every load's context derives from it
	cancel context.CancelFunc
}

// Failure is a load that did not complete.
type Failure struct {
	RequestID string
	Err       error
}

// ConsumerStats are running totals for observability.
type ConsumerStats struct {
	Loads, Failed int64
	// Failures counts the failed loads by kind (KindOf).
	Failures FailureCounts
	// Completed loads by the producer's choice: raw frames, fast-mode frames, high-ratio frames.
	RawLoads, FastLoads, HighRatioLoads int64
	RawBytes, WireBytes                 int64
	// Unverified counts completed loads whose frames could not be checked against the producer's completed
	// record (withdrawn before it was seen: its publish failed, or the read came late); the transport checked
	// every chunk's CRC-32C all the same.
	Unverified            int64
	FetchTime, DecodeTime time.Duration // fetch: first dial to last chunk; decode: codec time (GPU: by events)
	CopyTime              time.Duration // host-to-device copies of frames (GPU caches)
	LastTransfer          transport.Stats
	HugePages             HugePageReport // of the last host cache registered (WithHugePages)
}

type load struct {
	reqID, handoffID string
	secret           []byte
	blocks           []int
}

// NewConsumer joins the control plane.
func NewConsumer(cp ControlPlane, opts ...Option) (*Consumer, error) {
	if cp == nil {
		return nil, optErr("nil control plane")
	}
	o, err := buildOptions(opts)
	if err != nil {
		return nil, err
	}
	c := &Consumer{
		o: o, cp: cp, loads: map[string]*load{},
		log: slog.Default().With("component", "splitzip.consumer", "engine", o.EngineID, "rank", o.Rank),
	}
	if c.nixl, err = newPayloadClient(o, c.log); err != nil {
		return nil, err
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c, nil
}

// RegisterHostCache tells the consumer where its KV cache lives in host memory.
func (c *Consumer) RegisterHostCache(l Layout, bases []uintptr) error {
	if c.o.NIXLDeviceReceive > 0 {
		return fmt.Errorf("%w: NIXL device receive memory (WithNIXLDeviceReceive) is for a KV cache in GPU memory; this one is in host memory", ErrLayout)
	}
	hc, err := newHostCache(l, bases)
	if err != nil {
		return err
	}
	if c.o.HugePages {
		hc.startHugePages(c.log, func(rep HugePageReport) {
			c.mu.Lock()
			c.stats.HugePages = rep
			c.mu.Unlock()
		})
	}
	return c.register(hc)
}

func (c *Consumer) register(kc kvCache) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.loads) > 0 {
		return errors.Join(kc.close(), fmt.Errorf("%w: cannot re-register the KV cache with %d loads in flight", ErrLayout, len(c.loads)))
	}
	if c.cache != nil {
		if err := c.cache.close(); err != nil {
			c.log.Warn("closing the previous KV cache registration", "err", err)
		}
	}
	c.cache = kc
	return nil
}

// Load starts loading the handoff h (as the producer returned it: its ID and Secret; the other fields are not
// needed) into blocks for reqID and returns at once; Poll reports the outcome. The blocks must be as many as
// the producer saved. A handoff without a well-formed secret is refused with ErrAccess.
func (c *Consumer) Load(reqID string, h Handoff, blocks []int) error {
	secret, err := parseSecret(h.Secret)
	if err != nil {
		return fmt.Errorf("request %q handoff %s: %w", reqID, shortID(h.ID), err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closed:
		return ErrClosed
	case c.cache == nil:
		return ErrNotRegistered
	case c.loads[reqID] != nil:
		return fmt.Errorf("%w: request %q", ErrDuplicate, reqID)
	case len(c.loads) >= c.o.MaxInFlight:
		return fmt.Errorf("%w: %d loads in flight (MaxInFlight)", ErrStagingFull, len(c.loads))
	}
	if err := c.cache.kvLayout().checkBlocks(blocks); err != nil {
		return fmt.Errorf("request %q: %w", reqID, err)
	}
	ld := &load{reqID: reqID, handoffID: h.ID, secret: secret, blocks: append([]int(nil), blocks...)}
	c.loads[reqID] = ld
	c.wg.Add(1)
	go c.run(ld, c.cache)
	return nil
}

// Poll returns the requests whose loads finished since the last call, and those that failed.
func (c *Consumer) Poll() (done []string, failed []Failure) {
	c.mu.Lock()
	defer c.mu.Unlock()
	done, failed = c.done, c.failed
	c.done, c.failed = nil, nil
	return done, failed
}

// Stats returns running totals.
func (c *Consumer) Stats() ConsumerStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// InFlight is the number of loads under way.
func (c *Consumer) InFlight() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.loads)
}

func (c *Consumer) run(ld *load, cache kvCache) {
	defer c.wg.Done()
	ctx, cancel := context.WithTimeout(c.ctx, c.o.LoadTimeout)
	defer cancel()
	notify, peer, err := c.fetch(ctx, ld, cache)
	kind := KindOf(err)
	c.mu.Lock()
	delete(c.loads, ld.reqID)
	c.stats.Loads++
	if err != nil {
		c.stats.Failed++
		c.stats.Failures[kind]++
		c.failed = append(c.failed, Failure{RequestID: ld.reqID, Err: err})
	} else {
		c.done = append(c.done, ld.reqID)
	}
	c.mu.Unlock()
	if err != nil {
		c.log.Warn("load failed", "request", ld.reqID, "handoff", shortID(ld.handoffID), "producer", peer.engine, "addr", peer.addr,
			"kind", kind, "err", err)
	} else {
		c.log.Debug("load done", "request", ld.reqID, "handoff", shortID(ld.handoffID), "producer", peer.engine)
	}
	// The completion notice is for the producer's bookkeeping (its bypass policy, failure counts): sent after
	// Poll can report the load, so its round trip is not between the last block decoded and the engine.
	if notify != nil {
		notify(err)
	}
}

// peer names a load's producer for logs: its engine id and payload address, once the record told them.
type peer struct{ engine, addr string }

// fetch does one load; a nil error means every block arrived, verified and decoded. Once the record is
// known, notify tells the producer how the load ended (whatever happens from there on); run calls it.
func (c *Consumer) fetch(ctx context.Context, ld *load, cache kvCache) (notify func(error), from peer, err error) {
	rctx, rcancel := context.WithTimeout(ctx, c.o.RecordWait)
	rec, err := c.cp.WaitShard(rctx, ld.handoffID, c.o.Rank, false)
	rcancel()
	if err != nil {
		return nil, from, fmt.Errorf("handoff %s: %w", shortID(ld.handoffID), err)
	}
	from = peer{rec.ProducerEngineID, rec.Addr}
	notify = func(err error) {
		nctx, ncancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer ncancel()
		msg := ""
		if err != nil {
			msg = err.Error()
		}
		n := completion{HandoffID: ld.handoffID, ConsumerEngineID: c.o.EngineID, Rank: c.o.Rank, OK: err == nil, Err: msg}
		if nerr := c.cp.NotifyDone(nctx, rec.ProducerEngineID, n); nerr != nil {
			c.log.Debug("completion notice not delivered", "handoff", shortID(ld.handoffID), "producer", rec.ProducerEngineID, "err", nerr)
		}
	}
	return notify, from, c.fetchFrom(ctx, ld, cache, rec)
}

// fetchFrom fetches and decodes the handoff rec describes.
func (c *Consumer) fetchFrom(ctx context.Context, ld *load, cache kvCache, rec *shardRecord) error {
	if rec.SecretHash != "" && rec.SecretHash != secretHash(ld.secret) {
		return fmt.Errorf("%w: handoff %s: this consumer's secret is not the one its producer published a hash of "+
			"(the handoff parameters were changed on the way, or belong to another handoff)", ErrAccess, shortID(ld.handoffID))
	}
	l := cache.kvLayout()
	if err := rec.CheckCompatible(l.Fingerprint(), l.DType.String(), l.Layers, len(ld.blocks)); err != nil {
		hint := ""
		if rec.LayoutFingerprint != l.Fingerprint() {
			hint = " (model, layers, block size, heads, head size, dtype and TP size must match)"
		}
		return fmt.Errorf("%w: handoff %s: %w%s", ErrMismatch, shortID(ld.handoffID), err, hint)
	}
	f := framing{layers: l.Layers, blocks: len(ld.blocks), per: rec.BlocksPerFrame}
	dec, err := cache.loader(ld.blocks, f.per)
	if err != nil {
		return err
	}
	defer dec.close()
	sizes := make([]uint64, f.frames())
	crcs := make([]uint32, f.frames())
	var decodeTime, copyTime time.Duration
	var mu sync.Mutex
	// The completed record is read while the second half of the frames is still on the wire (the producer
	// publishes it once every frame is encoded, normally long before the wire is done), so its round trip is
	// not added after the last frame, and the record is normally complete at the first read (a wait started
	// with the fetch would find it open and need a watch). The producer keeps it until this consumer's
	// completion notice.
	type finalRecord struct {
		rec *shardRecord
		err error
	}
	finalCh := make(chan finalRecord, 1)
	fctx, fcancel := context.WithCancel(ctx)
	var finalOnce sync.Once
	startFinal := func() {
		finalOnce.Do(func() {
			go func() {
				r, err := c.cp.WaitShard(fctx, ld.handoffID, c.o.Rank, true)
				finalCh <- finalRecord{r, err}
			}()
		})
	}
	defer func() {
		fcancel()
		finalOnce.Do(func() { close(finalCh) }) // never started: nothing to wait for
		<-finalCh                               // the wait ends with fctx
	}()
	accepted := 0
	mode, modeName := rec.FrameMode(), rec.FrameMode()
	if rec.Raw {
		modeName = "raw"
	}
	// The transport verified each chunk's CRC-32C against the producer's; the same value is checked against
	// the complete record below, end to end, without another pass over the data.
	// accept decodes chunk i of n bytes with decode, given the raw bytes its blocks hold, and records it.
	accept := func(i, n int, crc uint32, decode func(layer, lo, hi int, want uint64) (timing, error)) error {
		if i < 0 || i >= f.frames() {
			return fmt.Errorf("%w: chunk %d of %d frames", ErrFrame, i, f.frames())
		}
		layer, lo, hi := f.frame(i)
		took, err := decode(layer, lo, hi, uint64(l.layerRawBytes(hi-lo)))
		if err != nil {
			return fmt.Errorf("%w: frame %d (%d blocks, %s): %w", ErrFrame, i, hi-lo, modeName, err)
		}
		mu.Lock()
		sizes[i], crcs[i] = uint64(n), crc
		decodeTime += took.codec
		copyTime += took.copy
		accepted++
		half := accepted == (f.frames()+1)/2
		mu.Unlock()
		if half {
			startFinal()
		}
		return nil
	}
	sink := func(i int, frame []byte, crc uint32) error {
		return accept(i, len(frame), crc, func(layer, lo, hi int, want uint64) (timing, error) {
			ch, err := parseChunk(frame, rec.Raw, mode, want)
			if err != nil {
				return timing{}, err
			}
			return dec.decode(ch, layer, lo, hi)
		})
	}
	// Chunks read into GPU memory (WithNIXLDeviceReceive) are decoded where they landed.
	var dsink nixl.DeviceSink
	if dl, ok := dec.(*deviceLoader); ok && c.recv != nil {
		dsink = func(i int, p uintptr, n int, crc uint32) error {
			return accept(i, n, crc, func(layer, lo, hi int, want uint64) (timing, error) {
				return dl.decodeAt(cuda.DevicePtr(p), n, rec.Raw, mode, want, layer, lo, hi)
			})
		}
	}
	t0 := time.Now()
	st, err := c.fetchPayload(ctx, rec, ld.handoffID, ld.secret, sink, dsink)
	if err != nil {
		return fmt.Errorf("handoff %s from %s: %w", shortID(ld.handoffID), rec.Addr, err)
	}
	fetchTime := time.Since(t0)
	// End to end: the frames we decoded must be the ones the producer recorded when it finished encoding.
	// The producer publishes that record before it can release the handoff, so the wait is short; it is bounded
	// all the same, in case the publish failed (the producer logs that).
	startFinal()
	var final *shardRecord
	timer := time.NewTimer(max(finalRecordWait, c.o.RecordWait))
	select {
	case r := <-finalCh:
		final, err = r.rec, r.err
		finalCh <- r // for the deferred drain
	case <-timer.C:
		err = context.DeadlineExceeded
	}
	timer.Stop()
	if err != nil && !recordGone(err) {
		return fmt.Errorf("handoff %s: completed record: %w", shortID(ld.handoffID), err)
	}
	if final == nil { // withdrawn before it was seen: its publish failed (the producer logged why), or a late read
		c.log.Info("the handoff was withdrawn before its completed record was seen; its frames were checked chunk by chunk only",
			"handoff", ld.handoffID, "producer", rec.ProducerEngineID, "addr", rec.Addr)
	}
	if final != nil {
		if final.Raw != rec.Raw || final.FrameMode() != rec.FrameMode() {
			return fmt.Errorf("%w: the completed record says %s frames (raw %t), the open one %s (raw %t)", ErrFrame, final.FrameMode(), final.Raw, rec.FrameMode(), rec.Raw)
		}
		for i := range sizes {
			if final.FrameSizes[i] != sizes[i] || final.Checksums[i] != crcs[i] {
				return fmt.Errorf("%w: frame %d: received %d bytes crc32c %08x, producer recorded %d bytes %08x", ErrFrame, i, sizes[i], crcs[i], final.FrameSizes[i], final.Checksums[i])
			}
		}
	}
	c.mu.Lock()
	c.stats.RawBytes += l.layerRawBytes(len(ld.blocks)) * int64(l.Layers)
	c.stats.WireBytes += st.Bytes
	c.stats.FetchTime += fetchTime
	c.stats.DecodeTime += decodeTime
	c.stats.CopyTime += copyTime
	c.stats.LastTransfer = st
	if final == nil {
		c.stats.Unverified++
	}
	switch {
	case rec.Raw:
		c.stats.RawLoads++
	case mode == szn.FrameModeHighRatio:
		c.stats.HighRatioLoads++
	default:
		c.stats.FastLoads++
	}
	c.mu.Unlock()
	return nil
}

// finalRecordWait bounds the wait for the completed record after the last frame (RecordWait when that is
// longer: a control plane that takes that long to show a record takes as long to show its completion).
const finalRecordWait = 10 * time.Second

// Close abandons loads in flight (they fail with ErrClosed) and waits for them.
func (c *Consumer) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.cancel()
	c.mu.Unlock()
	c.wg.Wait()
	var err error
	if c.nixl != nil {
		err = c.nixl.Close()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cache != nil {
		err = errors.Join(err, c.cache.close())
	}
	if c.recv != nil {
		if c.nixl.Leaked() > 0 { // a read that could not be cancelled may still write it
			c.log.Warn("keeping the NIXL device receive memory: reads into it could not be cancelled", "bytes", c.nixl.Leaked())
		} else {
			err = errors.Join(err, c.recv.close())
		}
	}
	return err
}
