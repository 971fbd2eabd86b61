package connector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"maps"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/connector/transport"
	szn "github.com/splitzip/splitzip/nats"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Producer is the prefill side of a handoff: it compresses a request's KV blocks layer by layer into bounded
// staging memory, serves the frames to the consumer peer-to-peer, and publishes the handoff on the control
// plane. Once a request's layers are staged its blocks are free for the engine to reuse (FinishedSending).
// A Producer serves one tensor-parallel rank; it is safe for concurrent use.
type Producer struct {
	o       Options
	cp      ControlPlane
	srv     payloadServer
	addr    string
	staging *staging
	// devStaging is the GPU memory frames are staged in (WithNIXLDeviceStaging, a GPU cache), under mu
	devStaging *gpuRegion
	policy     modePolicy
	coders     chan *coders
	unsub      func() error
	log        *slog.Logger
	life       context.Context // ends when Close begins: bounds control-plane calls that outlive a handoff's release
	stop       context.CancelFunc

	mu      sync.Mutex
	bypass  Bypass
	mode    Mode
	cache   kvCache
	tables  *tableLearner      // of the registered cache
	saves   map[string]*save   // by request id
	byID    map[string]*save   // by handoff id
	fetched map[string]fetched // completed transfers awaiting their completion notice
	// keep holds the records of fetched handoffs until their consumer's completion notice (or recordKeep):
	// the consumer checks its frames against the completed record after the transfer, and must find it.
	keep map[string]*time.Timer
	// drops holds a slot per record deletion running beside the completion handler (maxRecordDrops).
	drops  chan struct{}
	sent   []string // requests whose blocks the engine may free
	stats  ProducerStats
	closed bool
	wg     sync.WaitGroup
}

// ProducerStats are running totals for observability.
type ProducerStats struct {
	Handoffs, Failed int64
	// CompletePublishFailed counts completed records that could not be published (the consumer then loads
	// without the end-to-end check of frame sizes and checksums; each chunk's CRC-32C is still checked).
	CompletePublishFailed int64
	// Expired counts handoffs released unclaimed when their TTL ran out (a consumer that never came, or died
	// mid-fetch): their staging memory was freed then.
	Expired int64
	// ConsumerFailed counts the consumers' notices of failed loads (also in Failed).
	ConsumerFailed int64
	// StagingWaits counts handoffs that waited for staging before their first frame (the budget was spent or
	// earlier handoffs were in line), and StagingWait sums those waits: backpressure from the link or the
	// consumers, or a budget too small for the load.
	StagingWaits int64
	StagingWait  time.Duration
	// Handoffs by path: raw frames, fast-mode frames, high-ratio frames (they add up to Handoffs).
	RawHandoffs, FastHandoffs, HighRatioHandoffs int64
	RawBytes, EncodedBytes                       int64
	Escapes, Elements                            int64
	EncodeTime                                   time.Duration  // codec time (GPU: kernel time by events)
	CopyTime                                     time.Duration  // device-to-host copies of frames (GPU caches)
	HugePages                                    HugePageReport // of the last host cache registered (WithHugePages)
}

// Handoff is what the decode side needs to load a request: pass it to the consumer it is meant for through
// the engine's own request path (in vLLM the kv_transfer_params), never through the control plane. The ID
// names the handoff; the Secret is what lets that consumer, and no one else, fetch it.
type Handoff struct {
	ID               string `json:"handoff_id"`
	Secret           string `json:"secret"`
	ProducerEngineID string `json:"producer_engine_id"`
	RequestID        string `json:"request_id"`
}

// save is one request's handoff on the producer.
type save struct {
	reqID, handoffID string
	secret           []byte
	blocks           []int
	path             path // raw, fast or high-ratio frames
	payload          *transport.StreamPayload
	dev              *devicePayload  // the payload again, when its frames are staged in GPU memory
	transport        string          // the records' payload transport ("" for TCP)
	locator          json.RawMessage // and what else consumers need to fetch it (NIXL)
	f                framing
	layers           chan layerJob
	layersClosed     bool
	next             int // next layer SaveLayer expects
	ctx              context.Context
	cancel           context.CancelFunc
	frames           [][]byte
	sizes            []uint64
	crcs             []uint32
	rawBytes         uint64
	ticket           uint64        // the save's place in line for staging
	queued           bool          // it waited for staging (under Producer.mu): its times measure the line
	failed           error         // why the save failed (under Producer.mu), once it has
	staged           chan struct{} // closed when every layer is staged, or the save failed
	err              error
	released         bool
	workerDone       chan struct{}
	published        chan struct{} // closed once the open record's publish returned
	unpublished      bool          // that publish failed: Begin reported the error, the worker only stops
	completed        bool          // the completed record was published (by the worker, before workerDone)
	created, expires time.Time     // the open record's, which the complete one keeps
	releaseErr       error         // why the transport released the payload: nil once fetched in full
}

// NewProducer starts a payload server and joins the control plane.
func NewProducer(cp ControlPlane, opts ...Option) (*Producer, error) {
	if cp == nil {
		return nil, optErr("nil control plane")
	}
	o, err := buildOptions(opts)
	if err != nil {
		return nil, err
	}
	p := &Producer{
		o: o, cp: cp, staging: newStaging(o.StagingBytes), bypass: o.Bypass, mode: o.Mode,
		policy: modePolicy{linkConf: configuredLinkRate(o)},
		coders: make(chan *coders, 2), drops: make(chan struct{}, maxRecordDrops),
		saves: map[string]*save{}, byID: map[string]*save{}, fetched: map[string]fetched{}, keep: map[string]*time.Timer{},
		log: slog.Default().With("component", "splitzip.producer", "engine", o.EngineID, "rank", o.Rank),
	}
	p.life, p.stop = context.WithCancel(context.Background())
	for range cap(p.coders) {
		cs, err := newCoders(o.Codebook)
		if err != nil {
			return nil, err
		}
		p.coders <- cs
	}
	if p.srv, err = newPayloadServer(o, p.onTransfer); err != nil {
		return nil, err
	}
	p.addr = p.srv.addr()
	p.unsub, err = p.cp.SubscribeCompletions(o.EngineID, o.Rank, func(c completion) error { p.onCompletion(c); return nil })
	if err != nil {
		return nil, errors.Join(err, p.srv.Close())
	}
	return p, nil
}

// configuredLinkRate is the link rate the options give: WithLinkRate, else the transport's rate limit, else 0
// (measured).
func configuredLinkRate(o Options) float64 {
	if o.LinkRate > 0 {
		return o.LinkRate
	}
	to := transport.GetDefaultOptions()
	for _, opt := range o.Transport {
		if opt != nil && opt(&to) != nil {
			return 0 // the transport refuses it at Listen, with its own message
		}
	}
	return float64(to.RateLimit)
}

// SetBypass changes the compression policy for handoffs begun from now on (benchmarks compare raw and
// compressed on one producer; engines set it once through WithBypass).
func (p *Producer) SetBypass(b Bypass) error {
	if b < BypassAuto || b > BypassAlways {
		return optErr("bypass %d", int(b))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.bypass = b
	return nil
}

// SetMode changes the codec mode for handoffs begun from now on (benchmarks compare modes on one producer;
// engines set it once through WithMode).
func (p *Producer) SetMode(m Mode) error {
	if m < ModeAuto || m > ModeHighRatio {
		return optErr("mode %d", int(m))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = m
	return nil
}

// Estimates returns what the auto choice currently knows: the link rate and, per path, the codec's rates,
// ratio and measured efficiency.
func (p *Producer) Estimates() ModeEstimates { return p.policy.estimates() }

// Addr is where consumers fetch payloads.
func (p *Producer) Addr() string { return p.addr }

// RegisterHostCache tells the producer where the rank's KV cache lives in host memory: one base address per
// layer, laid out as l describes.
func (p *Producer) RegisterHostCache(l Layout, bases []uintptr) error {
	c, err := newHostCache(l, bases)
	if err != nil {
		return err
	}
	if p.o.HugePages {
		c.startHugePages(p.log, func(rep HugePageReport) {
			p.mu.Lock()
			p.stats.HugePages = rep
			p.mu.Unlock()
		})
	}
	return p.register(c)
}

func (p *Producer) register(c kvCache) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.saves) > 0 {
		return errors.Join(c.close(), fmt.Errorf("%w: cannot re-register the KV cache with %d handoffs in flight", ErrLayout, len(p.saves)))
	}
	l := c.kvLayout()
	if t := p.o.CodeTable; t != nil && t.DType != l.DType {
		return errors.Join(c.close(), optErr("the code table is for %s, the KV cache holds %s", t.DType, l.DType))
	}
	hostBudget := p.o.StagingBytes
	if dc, gpu := c.(*deviceCache); gpu && p.o.NIXLDeviceStaging {
		if err := p.useDeviceStaging(dc.ordinal); err != nil {
			return errors.Join(c.close(), err)
		}
		hostBudget = tableArenaBytes // frames go to GPU staging: the host arena holds the chunk tables
	} else if p.o.NIXLDeviceStaging {
		return errors.Join(c.close(), fmt.Errorf("%w: NIXL device staging (WithNIXLDeviceStaging) is for a KV cache in GPU memory; this one is in host memory", ErrLayout))
	}
	alloc, freeOld, err := p.srv.stagingAllocator(c.stagingAllocator(), hostBudget)
	if err != nil {
		return errors.Join(c.close(), err)
	}
	if p.cache != nil {
		if err := p.cache.close(); err != nil {
			p.log.Warn("closing the previous KV cache registration", "err", err)
		}
	}
	p.cache = c
	p.tables = newTableLearner(l, p.o.CodeTable, p.o.Codebook != nil)
	_, gpu := c.(*deviceCache)
	p.policy.setGPU(gpu)
	p.staging.setAllocator(alloc)
	freeOld()
	return nil
}

// NewHandoffID returns a fresh, unguessable handoff id.
func NewHandoffID() string { return newHandoffID() }

// Save hands off a whole request: Begin, every layer, and returns once the save is under way (the layers are
// encoded in the background; WaitSaved waits for them). A save that fails before every layer is queued (a
// handoff larger than the staging budget) returns its error beside the handoff, which consumers then see fail.
func (p *Producer) Save(reqID string, blocks []int) (Handoff, error) {
	return p.begin(reqID, "", "", blocks, true)
}

// Begin opens a handoff for reqID's blocks and publishes it, so a consumer can start fetching while the layers
// are still being saved. Layers follow with SaveLayer, in order.
func (p *Producer) Begin(reqID string, blocks []int) (Handoff, error) {
	return p.BeginHandoff(reqID, "", "", blocks)
}

// BeginHandoff is Begin under a handoff id and secret chosen by the caller (NewHandoffID, NewHandoffSecret):
// with tensor parallelism the engine's scheduler picks one pair per request and every rank's producer saves
// its shard under it. "" for both picks a fresh pair; an id given without its secret is refused, since ranks
// that each picked one would hand the consumer secrets it cannot tell apart.
func (p *Producer) BeginHandoff(reqID, handoffID, secret string, blocks []int) (Handoff, error) {
	return p.begin(reqID, handoffID, secret, blocks, false)
}

// begin opens and publishes a handoff; all queues every layer too (Save). The worker starts before the
// publish, so with all the first frames are encoded during the control plane's round trip instead of after it.
func (p *Producer) begin(reqID, handoffID, secret string, blocks []int, all bool) (Handoff, error) {
	switch {
	case handoffID == "" && secret == "":
		handoffID, secret = newHandoffID(), NewHandoffSecret()
	case handoffID == "":
		return Handoff{}, fmt.Errorf("%w: request %q: a secret without its handoff id", ErrAccess, reqID)
	default:
		if err := szn.ValidHandoffID(handoffID); err != nil {
			return Handoff{}, fmt.Errorf("request %q: %w", reqID, err)
		}
	}
	key, err := parseSecret(secret)
	if err != nil {
		return Handoff{}, fmt.Errorf("request %q handoff %s: %w", reqID, shortID(handoffID), err)
	}
	s, rec, err := p.open(reqID, handoffID, key, blocks)
	if err != nil {
		return Handoff{}, err
	}
	p.mu.Lock()
	cache := p.cache
	p.wg.Add(1)
	p.mu.Unlock()
	go p.work(s, cache)
	var saveErr error
	if all {
		for l := range s.f.layers {
			if saveErr = p.SaveLayer(reqID, l); saveErr != nil { // a release (expiry, Close) or a failed save refuses these
				break
			}
		}
	}
	// Publishing is a control-plane round trip: done without holding the lock, and bounded by its own
	// deadline (the handoff's context lasts its whole TTL).
	pctx, pcancel := context.WithTimeout(s.ctx, recordPublishWait)
	err = p.putShard(pctx, rec)
	pcancel()
	if err != nil {
		p.mu.Lock()
		s.unpublished = true
		if !s.layersClosed {
			s.next, s.layersClosed = s.f.layers, true
			close(s.layers)
		}
		p.mu.Unlock()
		s.cancel() // stops encoding what no consumer can find
		close(s.published)
		p.srv.Withdraw(s.handoffID)
		return Handoff{}, fmt.Errorf("request %q: publishing handoff: %w", reqID, err)
	}
	s.created, s.expires = rec.CreatedAt, rec.ExpiresAt // PutShard set them
	close(s.published)
	p.log.Debug("handoff opened", "request", reqID, "handoff", shortID(s.handoffID), "blocks", len(blocks), "path", s.path)
	return Handoff{ID: s.handoffID, Secret: secret, ProducerEngineID: p.o.EngineID, RequestID: reqID}, saveErr
}

// open registers a new save and offers its payload.
func (p *Producer) open(reqID, handoffID string, secret []byte, blocks []int) (*save, *shardRecord, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.closed:
		return nil, nil, ErrClosed
	case p.cache == nil:
		return nil, nil, ErrNotRegistered
	case p.saves[reqID] != nil:
		return nil, nil, fmt.Errorf("%w: request %q", ErrDuplicate, reqID)
	case len(p.saves) >= p.o.MaxInFlight:
		return nil, nil, fmt.Errorf("%w: %d handoffs in flight (MaxInFlight)", ErrStagingFull, len(p.saves))
	}
	l := p.cache.kvLayout()
	if err := l.checkBlocks(blocks); err != nil {
		return nil, nil, fmt.Errorf("request %q: %w", reqID, err)
	}
	f := newFraming(l, len(blocks), p.o.FrameBytes)
	allowed := allowedPaths(p.bypass, p.mode)
	for q := range numPaths {
		allowed[q] = allowed[q] && p.cache.codes(q)
	}
	if p.mode == ModeAuto && p.policy.linkConf == 0 && len(p.saves) >= runtime.NumCPU() && (allowed[pathFast] || allowed[pathRaw]) {
		// More handoffs in flight than cores: they share the CPU, and each one's measured transfer rate is
		// its share of the host, not the link's. The per-handoff model then takes that for a slow link and
		// favours high-ratio frames, whose codec costs the most CPU per byte, slowing every handoff. Without a
		// configured link rate to say the wire is the bottleneck, auto keeps to raw and fast frames then.
		allowed[pathHighRatio] = false
	}
	s := &save{
		reqID: reqID, handoffID: handoffID, secret: secret, blocks: append([]int(nil), blocks...),
		path: p.policy.choose(float64(l.layerRawBytes(len(blocks))*int64(l.Layers)), float64(l.layerRawBytes(f.per)), allowed),
		f:    f, layers: make(chan layerJob, l.Layers), frames: make([][]byte, f.frames()), sizes: make([]uint64, f.frames()),
		crcs: make([]uint32, f.frames()), staged: make(chan struct{}), workerDone: make(chan struct{}),
		published: make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithTimeout(context.Background(), p.o.HandoffTTL)
	s.payload = transport.NewStreamPayload(f.frames(), func(err error) { p.onRelease(s, err) })
	var offered transport.Payload = s.payload
	if _, gpu := p.cache.(*deviceCache); gpu && p.devStaging != nil {
		s.dev = &devicePayload{StreamPayload: s.payload, at: make([]devFrame, f.frames())}
		offered = s.dev
	}
	if err := p.srv.Offer(s.handoffID, s.secret, offered); err != nil {
		s.cancel()
		return nil, nil, err
	}
	var err error
	if s.transport, s.locator, err = p.srv.locate(s.handoffID, s.secret); err != nil {
		p.srv.Withdraw(s.handoffID)
		s.cancel()
		return nil, nil, err
	}
	s.ticket = p.staging.ticket() // last: begin starts the worker that redeems it (or gives it up)
	p.saves[reqID] = s
	p.byID[s.handoffID] = s
	return s, p.record(s, false), nil
}

// SaveLayer queues layer l of reqID for encoding. Layers must come in order 0, 1, …; the call does not wait
// for the encoding (the engine's forward pass goes on meanwhile).
func (p *Producer) SaveLayer(reqID string, l int) error { return p.saveLayer(reqID, l, nil) }

// layerJob is a layer to encode, with the mark of the engine's writes to it (GPU caches).
type layerJob struct {
	layer int
	ready *readyMark
}

func (p *Producer) saveLayer(reqID string, l int, ready *readyMark) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	release := func() {
		if ready != nil {
			ready.close()
		}
	}
	s := p.saves[reqID]
	if s == nil {
		release()
		return fmt.Errorf("%w: %q (call Begin first)", ErrUnknownRequest, reqID)
	}
	if s.released {
		release()
		return fmt.Errorf("%w: the handoff of %q already ended (expired or closed)", ErrUnknownRequest, reqID)
	}
	if s.failed != nil {
		release()
		return fmt.Errorf("request %q: its save already failed: %w", reqID, s.failed)
	}
	if l != s.next {
		release()
		return fmt.Errorf("%w: request %q: layer %d saved out of order (expected %d)", ErrLayout, reqID, l, s.next)
	}
	s.next++
	s.layers <- layerJob{l, ready} // buffered for every layer: never blocks
	if s.next == s.f.layers {
		s.layersClosed = true
		close(s.layers)
	}
	return nil
}

// WaitSaved waits until every layer of reqID is encoded and staged (or the save failed).
func (p *Producer) WaitSaved(ctx context.Context, reqID string) error {
	p.mu.Lock()
	s := p.saves[reqID]
	p.mu.Unlock()
	if s == nil {
		return nil // already finished and released
	}
	select {
	case <-s.staged:
		return s.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// FinishedSending returns the requests whose blocks the engine may free since the last call: their layers are
// all in staging memory (or their save failed), so the producer no longer reads the engine's blocks.
func (p *Producer) FinishedSending() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.sent
	p.sent = nil
	return out
}

// Stats returns running totals.
func (p *Producer) Stats() ProducerStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

// StagingInUse is the staging memory currently held, in bytes.
func (p *Producer) StagingInUse() int64 { return p.staging.inUse() }

// InFlight is the number of handoffs not yet released.
func (p *Producer) InFlight() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.saves)
}

// work encodes the layers of one save as SaveLayer queues them.
func (p *Producer) work(s *save, cache kvCache) {
	defer p.wg.Done()
	defer close(s.workerDone)
	fail := func(err error) {
		s.err = err
		p.mu.Lock()
		s.failed = err // later SaveLayer calls say why they are refused
		p.mu.Unlock()
		s.payload.Fail(err)
		<-s.published
		p.mu.Lock()
		unpublished := s.unpublished
		p.mu.Unlock()
		if unpublished { // Begin failed and said so: not a handoff the engine waits on
			close(s.staged)
			return
		}
		p.mu.Lock()
		if !s.layersClosed { // SaveLayer calls after a failure are refused, not queued
			s.layersClosed, s.next = true, s.f.layers
			close(s.layers)
		}
		p.mu.Unlock()
		close(s.staged)
		p.finishSending(s, err)
	}
	defer func() { // marks of layers never encoded (a failure or a release cut the save short)
		for job := range s.layers {
			if job.ready != nil {
				job.ready.close()
			}
		}
	}()
	// All of the handoff's staging before its first frame, and before the saver's own resources: a handoff
	// waits for staging holding nothing (staging's doc says why).
	need := s.stagingNeed(cache.kvLayout())
	t0 := time.Now()
	res, waited, err := p.staging.reserve(s.ctx, s.ticket, need)
	if waited {
		d := time.Since(t0)
		p.mu.Lock()
		s.queued = true
		p.stats.StagingWaits++
		p.stats.StagingWait += d
		p.mu.Unlock()
		if d >= stagingWaitLog {
			p.log.Info("handoff waited for staging", "request", s.reqID, "handoff", shortID(s.handoffID),
				"wait", d.Round(time.Millisecond), "bytes", need, "budget", p.o.StagingBytes)
		}
	}
	if err != nil {
		fail(fmt.Errorf("request %q: %w", s.reqID, err))
		return
	}
	defer res.done()
	p.mu.Lock()
	env := saveEnv{coders: p.coders, tables: p.tables}
	p.mu.Unlock()
	sv, err := cache.saver(s.blocks, env, s.f.per)
	if err != nil {
		fail(fmt.Errorf("request %q: %w", s.reqID, err))
		return
	}
	defer sv.close()
	lay := cache.kvLayout()
	encoded := 0
	for job := range s.layers {
		l := job.layer
		err := p.saveFrames(s, sv, lay, res, job)
		if job.ready != nil {
			job.ready.close()
		}
		if err != nil {
			fail(fmt.Errorf("request %q layer %d: %w", s.reqID, l, err))
			return
		}
		encoded++
	}
	if encoded < s.f.layers {
		// Released before every layer came: expired unclaimed, or the producer closed.
		fail(fmt.Errorf("request %q: handoff released after %d of %d layers", s.reqID, encoded, s.f.layers))
		return
	}
	<-s.published // the open record first: the completed one must not be overwritten by it
	p.mu.Lock()
	unpublished, released, relErr := s.unpublished, s.released, s.releaseErr
	p.mu.Unlock()
	if unpublished {
		s.err = errors.New("the handoff was never published")
		close(s.staged)
		return
	}
	if released && relErr != nil {
		// Expired, withdrawn or the producer closing after the last frame was staged: nobody can fetch it
		// any more, so there is nothing to complete (the record is deleted next).
		close(s.staged)
		p.finishSending(s, nil)
		return
	}
	p.publishComplete(s)
	close(s.staged)
	p.finishSending(s, nil)
}

// stagingWaitLog is the wait for staging from which a handoff's wait is logged (shorter ones are only counted).
const stagingWaitLog = time.Second

const (
	// recordPublishWait bounds the publish of a shard record, retries included.
	recordPublishWait = 10 * time.Second
	// publishAttempt bounds one try: a request or reply lost with a NATS node that died mid-publish is tried
	// again (through the node the client reconnected to) instead of waiting out the whole deadline.
	publishAttempt = 3 * time.Second
	// publishRetryWait is the pause between tries.
	publishRetryWait = 250 * time.Millisecond
)

// putShard publishes rec, trying again after a timeout or a disconnect until ctx ends. A retried open record
// that is found to exist already was stored by the earlier try, whose reply was lost (the id is 128 random
// bits: nobody else made it).
func (p *Producer) putShard(ctx context.Context, rec *shardRecord) error {
	for try := 1; ; try++ {
		actx, cancel := context.WithTimeout(ctx, publishAttempt)
		err := p.cp.PutShard(actx, rec)
		cancel()
		switch {
		case err == nil:
			return nil
		case try > 1 && !rec.Complete && errors.Is(err, szn.ErrHandoffExists):
			return nil
		case ctx.Err() != nil || !(errors.Is(err, szn.ErrTimeout) || errors.Is(err, szn.ErrDisconnected)):
			return err
		}
		p.log.Info("publishing a handoff record again", "request", rec.RequestID, "handoff", shortID(rec.HandoffID),
			"complete", rec.Complete, "try", try, "err", err)
		select { // a stream electing a leader answers at once that it has none: pause before the next try
		case <-ctx.Done():
			return err
		case <-time.After(publishRetryWait):
		}
	}
}

// publishComplete publishes s's completed record: every frame's size and CRC-32C, which the consumer checks
// what it received against. Frames go to the transport as they are staged, so a consumer can receive the last
// one, and the transport release the payload (cancelling s.ctx), while this publish is still on its round
// trip: it therefore runs under its own deadline, not the handoff's context, and is cut short only by Close.
// The consumer waits for this record (or the record's removal) after its last frame; skipping it would leave
// that check undone.
func (p *Producer) publishComplete(s *save) {
	ctx, cancel := context.WithTimeout(p.life, recordPublishWait)
	defer cancel()
	if err := p.putShard(ctx, p.record(s, true)); err != nil {
		p.mu.Lock()
		p.stats.CompletePublishFailed++
		p.mu.Unlock()
		p.log.Warn("publishing the completed handoff failed; consumers see only the open record and skip the end-to-end check",
			"request", s.reqID, "handoff", shortID(s.handoffID), "err", err)
		return
	}
	s.completed = true
}

// saveFrames encodes the frames of one layer into staging and hands them to the transport.
func (p *Producer) saveFrames(s *save, sv layerSaver, lay *Layout, res *reservation, job layerJob) error {
	if s.dev != nil {
		return p.saveFramesOnDevice(s, sv.(*deviceSaver), lay, res, job)
	}
	g := s.f.groups()
	for i := job.layer * g; i < (job.layer+1)*g; i++ {
		l, lo, hi := s.f.frame(i)
		n := int(lay.layerRawBytes(hi - lo))
		buf, err := res.take(chunkCap(n))
		if err != nil {
			return err
		}
		s.frames[i] = buf
		frame, took, err := sv.encode(buf, l, lo, hi, s.path, p.policy.needsCalibration(s.path), job.ready)
		if err != nil {
			return err
		}
		if took.decode > 0 {
			p.policy.calibrate(s.path, n, took.decode)
		}
		crc, known := uint32(0), false
		if cs, ok := sv.(frameChecksummer); ok {
			crc, known = cs.lastCRC()
		}
		stage := took.codec + took.copy // the save worker's time on the frame: what the model's enc is
		if !known {
			t0 := time.Now()
			crc = crc32.Checksum(frame, castagnoli)
			stage += time.Since(t0)
		}
		p.policy.observeFrame(s.path, n, len(frame), stage, took.tabled)
		if err := p.staged(s, i, n, frame, crc, took); err != nil {
			return err
		}
	}
	return nil
}

// stagingNeed is the staging s's frames can take: each frame's capacity (chunkCap).
func (s *save) stagingNeed(lay *Layout) int64 {
	var n int64
	for i := range s.f.frames() {
		_, lo, hi := s.f.frame(i)
		n += int64(chunkCap(int(lay.layerRawBytes(hi - lo))))
	}
	return n
}

// staged records encoded frame i and hands it to the transport.
func (p *Producer) staged(s *save, i, n int, frame []byte, crc uint32, took timing) error {
	var hdrs []codec.Header
	for rest := frame; len(rest) > 0; { // one codec frame, or two (high-ratio: K's, V's)
		f, r, err := codec.SplitFrame(rest)
		if err != nil {
			return fmt.Errorf("splitzip: internal error, the encoder wrote a bad frame: %w", err)
		}
		h, _ := codec.ParseHeader(f)
		hdrs = append(hdrs, h)
		rest = r
	}
	p.stagedFrame(s, i, n, len(frame), hdrs, crc, took)
	return s.payload.PutWithCRC(i, frame, crc)
}

// stagedFrame records frame i of n raw bytes, size bytes encoded as the codec frames hdrs describe.
func (p *Producer) stagedFrame(s *save, i, n, size int, hdrs []codec.Header, crc uint32, took timing) {
	var escapes, elements uint64
	for _, h := range hdrs {
		escapes += h.Escapes
		if !h.Raw {
			elements += h.Elements
		}
	}
	s.sizes[i] = uint64(size)
	s.crcs[i] = crc // for the record, and sent by the transport as the chunk's
	s.rawBytes += uint64(n)
	p.mu.Lock()
	p.stats.EncodeTime += took.codec
	p.stats.CopyTime += took.copy
	p.stats.RawBytes += int64(n)
	p.stats.EncodedBytes += int64(size)
	p.stats.Escapes += int64(escapes)
	p.stats.Elements += int64(elements)
	p.mu.Unlock()
}

// finishSending tells the engine it may free the request's blocks.
func (p *Producer) finishSending(s *save, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sent = append(p.sent, s.reqID)
	p.stats.Handoffs++
	switch s.path {
	case pathRaw:
		p.stats.RawHandoffs++
	case pathFast:
		p.stats.FastHandoffs++
	case pathHighRatio:
		p.stats.HighRatioHandoffs++
	}
	if err != nil {
		p.stats.Failed++
		p.log.Warn("handoff failed on the producer", "request", s.reqID, "handoff", shortID(s.handoffID), "err", err)
	}
}

// onRelease runs when the transport is done with a payload: fetched, expired, withdrawn or closed.
func (p *Producer) onRelease(s *save, err error) {
	s.cancel() // stops a worker still waiting for staging or layers
	p.mu.Lock()
	if s.released {
		p.mu.Unlock()
		return
	}
	s.released, s.releaseErr = true, err
	expired := errors.Is(err, transport.ErrExpired)
	if expired {
		p.stats.Expired++
	}
	if s.next < s.f.layers {
		// The engine never finished saving: unblock the worker.
		s.next = s.f.layers
		if !s.layersClosed {
			s.layersClosed = true
			close(s.layers)
		}
	}
	p.wg.Add(1)
	p.mu.Unlock()
	if expired {
		p.log.Warn("handoff expired before a consumer fetched it; its staging is freed", "request", s.reqID, "handoff", shortID(s.handoffID),
			"ttl", p.o.HandoffTTL)
	}
	go func() {
		defer p.wg.Done()
		<-s.workerDone
		for i, f := range s.frames {
			p.staging.release(f)
			s.frames[i] = nil
		}
		if s.dev != nil {
			p.releaseDevice(s)
		}
		p.mu.Lock()
		delete(p.saves, s.reqID)
		delete(p.byID, s.handoffID)
		p.mu.Unlock()
		if expired {
			// The record stays: it expires at the same time, and a consumer that comes late learns that the
			// handoff expired (ErrHandoffExpired) rather than that it was withdrawn; the server drops it later.
			p.log.Debug("handoff released", "request", s.reqID, "handoff", shortID(s.handoffID), "err", err)
			return
		}
		p.log.Debug("handoff released", "request", s.reqID, "handoff", shortID(s.handoffID), "err", err)
		// A fetched handoff's completed record stays for its consumer's end-to-end check; one never completed
		// goes at once, so that a consumer waiting for the completion learns it will not come.
		if err == nil && s.completed && p.keepRecord(s.handoffID) {
			return
		}
		p.deleteRecord(s.handoffID)
	}()
}

// recordKeep bounds how long a fetched handoff's record waits for its consumer's completion notice.
const recordKeep = 10 * time.Second

// keepRecord holds the record of fetched handoff id until its consumer's completion notice or recordKeep,
// whichever comes first. It reports false, keeping nothing, once the producer is closing, and when the notice
// came already (the transfer is no longer among those awaiting one).
func (p *Producer) keepRecord(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, waiting := p.fetched[id]; !waiting || p.closed {
		return false
	}
	p.wg.Add(1)
	p.keep[id] = time.AfterFunc(recordKeep, func() { p.dropRecord(id) })
	return true
}

// dropRecord deletes a kept record now (on its completion notice, its timer, or Close).
func (p *Producer) dropRecord(id string) {
	p.mu.Lock()
	t := p.keep[id]
	delete(p.keep, id)
	p.mu.Unlock()
	if t == nil {
		return // dropped already
	}
	t.Stop()
	defer p.wg.Done()
	p.deleteRecord(id)
}

// maxRecordDrops bounds the record deletions a producer runs at once beside its completion handler.
const maxRecordDrops = 64

// dropRecordSoon drops handoff id's record without holding up the completion handler, whose notices are
// answered one at a time: a deletion is a round trip to the NATS server, and waiting for each one in turn held
// every consumer's notice behind the ones before it (thousands waiting at 1,000 handoffs a second). Beyond
// maxRecordDrops deletions in flight it deletes in line, which paces the notices instead.
func (p *Producer) dropRecordSoon(id string) {
	select {
	case p.drops <- struct{}{}:
		go func() {
			defer func() { <-p.drops }()
			p.dropRecord(id)
		}()
	default:
		p.dropRecord(id)
	}
}

func (p *Producer) deleteRecord(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.cp.DeleteShard(ctx, id, p.o.Rank); err != nil {
		p.log.Debug("removing the handoff record", "handoff", shortID(id), "err", err)
	}
}

// fetched is what the mode policy needs of a completed transfer until its consumer's completion notice.
type fetched struct {
	path                 path
	rawBytes, frameBytes int64
	start                time.Time // the consumer's first request
}

// maxFetched bounds the transfers awaiting a completion notice (a consumer that never sends one).
const maxFetched = 1024

// onTransfer measures the link by a completed transfer (modePolicy.observeTransfer) and notes when it
// started; the completion notice, sent once the consumer has decoded everything, closes the measurement of
// the whole handoff (onCompletion). From first request to last frame decoded is what a transfer costs the
// decode side, codec included.
func (p *Producer) onTransfer(st transport.Stats) {
	p.mu.Lock()
	s := p.byID[st.ID]
	if s == nil || st.Err != nil || p.cache == nil {
		p.mu.Unlock()
		return
	}
	if len(p.fetched) >= maxFetched {
		clear(p.fetched) // consumers that send no notices: measurements lost, memory bounded
	}
	if s.queued {
		// Its consumer may have waited for frames while the handoff waited for staging: its times measure the
		// producer's backlog, not the link or the path, so auto learns nothing from it.
		p.mu.Unlock()
		return
	}
	// The transfer ended, so every frame was staged: s.rawBytes is final.
	f := fetched{path: s.path, rawBytes: int64(s.rawBytes), frameBytes: p.cache.kvLayout().layerRawBytes(s.f.per),
		start: time.Now().Add(-st.Duration)}
	p.fetched[st.ID] = f
	p.mu.Unlock()
	p.policy.observeTransfer(f.path, f.rawBytes, st.Bytes, st.Duration)
}

// onCompletion handles a consumer's notice. The payload was already released by the transport when the fetch
// ended; the record, kept for the consumer's end-to-end check, goes now; a failure notice is logged and counted.
func (p *Producer) onCompletion(c completion) {
	p.dropRecordSoon(c.HandoffID)
	if !c.OK {
		p.mu.Lock()
		p.stats.Failed++
		p.stats.ConsumerFailed++
		delete(p.fetched, c.HandoffID)
		p.mu.Unlock()
		p.log.Warn("consumer reported a failed load", "handoff", shortID(c.HandoffID), "consumer", c.ConsumerEngineID, "err", c.Err)
		return
	}
	p.mu.Lock()
	f, ok := p.fetched[c.HandoffID]
	delete(p.fetched, c.HandoffID)
	p.mu.Unlock()
	if ok {
		p.policy.observeDone(f.path, float64(f.rawBytes), float64(f.frameBytes), time.Since(f.start))
	}
	p.log.Debug("consumer loaded handoff", "handoff", shortID(c.HandoffID))
}

func (p *Producer) record(s *save, complete bool) *shardRecord {
	l := p.cache.kvLayout()
	r := &shardRecord{
		HandoffID: s.handoffID, RequestID: s.reqID, ProducerEngineID: p.o.EngineID, Addr: p.addr,
		LayoutFingerprint: l.Fingerprint(), DType: l.DType.String(), Rank: p.o.Rank, TPSize: l.TPSize,
		Layers: l.Layers, Blocks: len(s.blocks), BlocksPerFrame: s.f.per, Frames: s.f.frames(), Raw: s.path == pathRaw,
		Mode: s.path.recordMode(), SecretHash: secretHash(s.secret),
		TTL: p.o.HandoffTTL, CreatedAt: s.created, ExpiresAt: s.expires, Transport: s.transport, Locator: s.locator,
	}
	if complete {
		r.Complete = true
		r.FrameSizes, r.Checksums, r.RawBytes = s.sizes, s.crcs, s.rawBytes
	}
	return r
}

// Close withdraws every handoff, stops serving and waits for the background work.
func (p *Producer) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	p.stop()
	err := errors.Join(p.unsub(), p.srv.Close()) // releases every payload
	p.mu.Lock()
	kept := slices.Collect(maps.Keys(p.keep))
	p.mu.Unlock()
	for _, id := range kept {
		p.dropRecord(id)
	}
	p.wg.Wait()
	p.staging.close()
	p.srv.freeMemory() // after staging: the save workers wrote into it until they ended
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cache != nil {
		err = errors.Join(err, p.cache.close())
	}
	if p.devStaging != nil {
		err = errors.Join(err, p.devStaging.close())
	}
	return err
}

func shortID(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}
