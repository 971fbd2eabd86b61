package nats

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Plane is a connection to the SplitZip control plane: the handoff and engine
// buckets and the completion subjects of one namespace. It is safe for
// concurrent use. Close releases everything it started.
type Plane struct {
	opts Options
	emb  *embedded // nil when connected to an external server
	nc   *natsgo.Conn
	js   jetstream.JetStream

	handoffs      jetstream.KeyValue
	engines       jetstream.KeyValue
	handoffBucket string
	engineBucket  string

	done      chan struct{}   // closed by Close
	bg        context.Context // cancelled by Close; for background work
	cancelBG  context.CancelFunc
	closeOnce sync.Once
	wg        sync.WaitGroup // heartbeats and post-restart repair

	mu           sync.Mutex
	closed       bool
	inflight     map[string]time.Time // handoff id -> expiry, published by this Plane
	listeners    map[uint64]func(ConnEvent)
	nextListener uint64
	epoch        uint64 // disconnects seen so far
	restartEpoch uint64 // epoch at which the last server change was seen
	serverID     string
	regs         map[string]*registration
}

// Connect builds the options and connects. With no URL it first starts an
// embedded JetStream server in-process on 127.0.0.1 (random port, temporary
// store directory unless configured); ClientURL tells other local processes
// where to join it. It then creates the namespace's buckets if missing.
func Connect(opts ...Option) (*Plane, error) {
	o := GetDefaultOptions()
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	p := &Plane{
		opts:          o,
		done:          make(chan struct{}),
		inflight:      make(map[string]time.Time),
		listeners:     make(map[uint64]func(ConnEvent)),
		regs:          make(map[string]*registration),
		handoffBucket: "splitzip_" + o.Namespace + "_handoffs",
		engineBucket:  "splitzip_" + o.Namespace + "_engines",
	}
	p.bg, p.cancelBG = context.WithCancel(context.Background())
	url := o.URL
	if url == "" {
		emb, err := startEmbedded(&o)
		if err != nil {
			return nil, err
		}
		p.emb = emb
		url = emb.clientURL()
	}
	nopts, err := p.natsOptions()
	if err != nil {
		p.shutdownEmbedded()
		return nil, err
	}
	nc, err := natsgo.Connect(url, nopts...)
	if err != nil {
		p.shutdownEmbedded()
		return nil, fmt.Errorf("splitzip/nats: connecting to %s: %w", url, err)
	}
	p.nc = nc
	p.serverID = nc.ConnectedServerId()
	js, err := jetstream.New(nc)
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("splitzip/nats: JetStream: %w", err)
	}
	p.js = js
	ctx, cancel := context.WithTimeout(context.Background(), o.Timeout)
	defer cancel()
	p.handoffs, p.engines, err = p.ensureBuckets(ctx)
	if err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

func (p *Plane) natsOptions() ([]natsgo.Option, error) {
	o := &p.opts
	nopts := []natsgo.Option{
		natsgo.Name(o.Name),
		natsgo.Timeout(o.Timeout),
		natsgo.MaxReconnects(o.MaxReconnects),
		natsgo.ReconnectWait(o.ReconnectWait),
		natsgo.DisconnectErrHandler(p.onDisconnect),
		natsgo.ReconnectHandler(p.onReconnect),
		natsgo.ClosedHandler(p.onClosed),
		// Silence the default stderr printing of async errors.
		natsgo.ErrorHandler(func(*natsgo.Conn, *natsgo.Subscription, error) {}),
	}
	if o.User != "" {
		nopts = append(nopts, natsgo.UserInfo(o.User, o.Password))
	}
	if o.Token != "" {
		nopts = append(nopts, natsgo.Token(o.Token))
	}
	if o.NKeyFile != "" {
		nk, err := natsgo.NkeyOptionFromSeed(o.NKeyFile)
		if err != nil {
			return nil, optErr("nkey seed file %s: %v", o.NKeyFile, err)
		}
		nopts = append(nopts, nk)
	}
	if o.CredentialsFile != "" {
		nopts = append(nopts, natsgo.UserCredentials(o.CredentialsFile))
	}
	if o.TLSConfig != nil {
		nopts = append(nopts, natsgo.Secure(o.TLSConfig))
	}
	return nopts, nil
}

// ensureBuckets opens the namespace's buckets, creating them when missing.
// An existing bucket is used as it is, even if it was created with other TTLs.
func (p *Plane) ensureBuckets(ctx context.Context) (handoffs, engines jetstream.KeyValue, err error) {
	storage := jetstream.FileStorage
	if p.opts.Storage == MemoryStorage {
		storage = jetstream.MemoryStorage
	}
	handoffs, err = p.ensureBucket(ctx, jetstream.KeyValueConfig{
		Bucket:      p.handoffBucket,
		Description: "splitzip handoff records",
		TTL:         p.opts.HandoffTTL + p.opts.ExpiredGrace,
		Storage:     storage,
		Replicas:    p.opts.Replicas,
	})
	if err != nil {
		return nil, nil, err
	}
	engines, err = p.ensureBucket(ctx, jetstream.KeyValueConfig{
		Bucket:      p.engineBucket,
		Description: "splitzip engine registry",
		TTL:         p.opts.EngineTTL,
		Storage:     storage,
		Replicas:    p.opts.Replicas,
	})
	if err != nil {
		return nil, nil, err
	}
	return handoffs, engines, nil
}

func (p *Plane) ensureBucket(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := p.js.KeyValue(ctx, cfg.Bucket)
	if err == nil {
		return kv, nil
	}
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, p.wrap("opening bucket "+cfg.Bucket, err)
	}
	kv, err = p.js.CreateKeyValue(ctx, cfg)
	if errors.Is(err, jetstream.ErrBucketExists) {
		// Another process created it concurrently.
		kv, err = p.js.KeyValue(ctx, cfg.Bucket)
	}
	if err != nil {
		return nil, p.wrap("creating bucket "+cfg.Bucket, err)
	}
	return kv, nil
}

// Options returns a copy of the options the Plane was built with.
func (p *Plane) Options() Options { return p.opts }

// ClientURL is the URL other processes pass to WithURL to join the same
// server: the embedded server's client URL, or the configured URL.
func (p *Plane) ClientURL() string {
	if p.emb != nil {
		return p.emb.clientURL()
	}
	return p.opts.URL
}

// Embedded reports whether the Plane runs its own in-process server.
func (p *Plane) Embedded() bool { return p.emb != nil }

// ServerID is the id of the server instance currently (or last) connected.
// It changes when the server restarts.
func (p *Plane) ServerID() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.serverID
}

// Connected reports whether the connection is up now.
func (p *Plane) Connected() bool { return p.nc != nil && p.nc.IsConnected() }

// Close deregisters this Plane's engines (best effort), stops heartbeats,
// closes the connection and shuts the embedded server down, if any. It is
// idempotent; no goroutine of the Plane survives it.
func (p *Plane) Close() {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		regs := make([]*registration, 0, len(p.regs))
		for _, r := range p.regs {
			regs = append(regs, r)
		}
		p.mu.Unlock()
		close(p.done)
		p.cancelBG()
		p.wg.Wait()
		if p.nc != nil {
			if p.nc.IsConnected() && p.engines != nil {
				for _, r := range regs {
					ctx, cancel := context.WithTimeout(context.Background(), p.opts.Timeout)
					_ = p.engines.Delete(ctx, r.id)
					cancel()
				}
			}
			p.nc.Close()
		}
		p.shutdownEmbedded()
	})
}

func (p *Plane) shutdownEmbedded() {
	if p.emb != nil {
		p.emb.shutdown()
	}
}

// opCtx applies Options.Timeout to ctx unless it already has a deadline.
func (p *Plane) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, p.opts.Timeout)
}

// checkOpen returns ErrClosed after Close.
func (p *Plane) checkOpen() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	return nil
}

// wrap turns a NATS or JetStream error from operation op into one wrapping
// the most telling sentinel: ErrClosed, ErrDisconnected or ErrTimeout.
func (p *Plane) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, natsgo.ErrConnectionClosed) || p.checkOpen() != nil:
		return fmt.Errorf("%w: %s: %w", ErrClosed, op, err)
	case p.nc != nil && !p.nc.IsConnected():
		return fmt.Errorf("%w: %s: %w", ErrDisconnected, op, err)
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, natsgo.ErrTimeout):
		return fmt.Errorf("%w: %s: %w", ErrTimeout, op, err)
	case errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, natsgo.ErrNoResponders):
		// No server answers for the bucket's stream yet: in a cluster, while it elects a new leader.
		return fmt.Errorf("%w: %s (the bucket's stream has no leader yet): %w", ErrTimeout, op, err)
	}
	return fmt.Errorf("splitzip/nats: %s: %w", op, err)
}
