package nats

// What the shard records share with any keyed record of the handoff bucket: the in-flight count of the
// records this Plane opened, and the wait for a key that survives reconnects and server restarts.

import (
	"context"
	"errors"
	"fmt"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// reserve takes an in-flight slot for key, first dropping expired entries.
func (p *Plane) reserve(key string, expires, now time.Time) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, dup := p.inflight[key]; dup {
		return fmt.Errorf("%w: %s", ErrHandoffExists, key)
	}
	if len(p.inflight) >= p.opts.MaxInFlight {
		for k, exp := range p.inflight {
			if !now.Before(exp) {
				delete(p.inflight, k)
			}
		}
	}
	if len(p.inflight) >= p.opts.MaxInFlight {
		return fmt.Errorf("%w: %d shard records published and neither deleted nor expired (limit %d)",
			ErrTooManyHandoffs, len(p.inflight), p.opts.MaxInFlight)
	}
	p.inflight[key] = expires
	return nil
}

func (p *Plane) release(key string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.inflight, key)
}

// InFlight is the number of shard records this Plane opened (PutShard) that
// are neither deleted (DeleteShard) nor expired.
func (p *Plane) InFlight() int {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, exp := range p.inflight {
		if now.Before(exp) {
			n++
		}
	}
	return n
}

// readAttempt bounds the first read of a waited-for key.
const readAttempt = 3 * time.Second

// waitKey watches key of handoff id until accept takes a stored value (done), the value is deleted
// (ErrHandoffReleased), or ctx ends (at most HandoffTTL without a deadline). It re-watches after reconnects
// and gives up on a key a restarted server no longer has (ErrServerRestarted).
func (p *Plane) waitKey(ctx context.Context, id, key string, accept func(jetstream.KeyValueEntry) (done bool, err error)) error {
	if err := p.checkOpen(); err != nil {
		return err
	}
	if err := ValidHandoffID(id); err != nil {
		return fmt.Errorf("%w: %w", ErrUnknownHandoff, err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.opts.HandoffTTL)
		defer cancel()
	}
	// The value is usually there already (a producer publishes before it hands the id out, and completes its
	// record before the last frame can arrive): one read then answers, where a watch costs a JetStream consumer.
	// The read gets its own deadline: a request lost with a server that died would otherwise hold the whole
	// wait; the watch below copes with reconnects.
	gctx, gcancel := context.WithTimeout(ctx, min(p.opts.Timeout, readAttempt))
	e, err := p.handoffs.Get(gctx, key)
	gcancel()
	if err == nil && e.Operation() == jetstream.KeyValuePut {
		if done, err := accept(e); done || err != nil {
			return err
		}
	}
	events := make(chan ConnEvent, 16)
	remove := p.OnConnEvent(func(ev ConnEvent) {
		select {
		case events <- ev:
		default: // a newer event will follow or the waiter re-reads anyway
		}
	})
	defer remove()
	var w waiter
	for {
		if err, again := w.watchOnce(ctx, p, key, events, accept); !again {
			return err
		}
	}
}

// waiter is the state of one waitKey across re-watches.
type waiter struct {
	restartedTo string // server id, once a restart was seen during the wait
	failures    int    // consecutive failed watch attempts
}

// watchOnce runs one watch of key; again asks the caller to watch anew. Each stored value goes to accept,
// which decodes it and says whether it is the one waited for (done) or the watch should go on.
func (w *waiter) watchOnce(ctx context.Context, p *Plane, key string, events <-chan ConnEvent,
	accept func(jetstream.KeyValueEntry) (done bool, err error)) (err error, again bool) {
	// The watch lives as long as its context: cancel it when this attempt
	// ends, not before.
	epoch := p.Epoch()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	kw, err := p.startWatch(wctx, cancel, key)
	if errors.Is(err, errWatchStalled) {
		if ctx.Err() != nil {
			return p.waitExpired(ctx, key), false
		}
		return nil, true
	}
	if err != nil {
		// Take in the events that happened during the attempt.
		for drained := false; !drained; {
			select {
			case ev := <-events:
				if ev.Kind == Closed {
					return ErrClosed, false
				}
				if ev.Kind == Reconnected && ev.Restarted {
					w.restartedTo = ev.ServerID
				}
			default:
				drained = true
			}
		}
		if w.restartedTo == "" && bucketMissing(err) {
			// The bucket is missing: the server lost its JetStream state (it restarted on memory storage or
			// a new store directory, possibly before this wait began, so no event told of it), and the
			// Plane's repair recreates the bucket. Whatever the key held is lost: wait for the bucket as after
			// a restart, then fail with ErrServerRestarted if the key is not there.
			w.restartedTo = p.ServerID()
		}
	}
	var updates <-chan jetstream.KeyValueEntry
	var retry <-chan time.Time
	switch {
	case err == nil:
		w.failures = 0
		defer func() { _ = kw.Stop() }()
		updates = kw.Updates()
	case ctx.Err() != nil:
		return p.waitExpired(ctx, key), false
	case p.checkOpen() != nil:
		return ErrClosed, false
	case !p.nc.IsConnected() || p.Epoch() != epoch || (w.restartedTo != "" && w.failures < 100):
		// Disconnected, reconnected meanwhile, or the restarted server is
		// still recovering: wait for the next event or retry shortly.
		w.failures++
		t := time.NewTimer(p.opts.ReconnectWait)
		defer t.Stop()
		retry = t.C
	default:
		return p.wrap("watching "+key, err), false
	}
	for {
		select {
		case <-ctx.Done():
			return p.waitExpired(ctx, key), false
		case <-p.done:
			return ErrClosed, false
		case <-retry:
			return nil, true
		case e, ok := <-updates:
			if !ok {
				// The watch ended (subscription closed). Watch anew now if
				// connected, else after the Reconnected event.
				if p.nc.IsConnected() {
					return nil, true
				}
				updates = nil
				continue
			}
			if e == nil {
				// End of the initial values: the key is not there (yet).
				if w.restartedTo != "" {
					return fmt.Errorf("%w: %s not found on the restarted server %s: %w",
						ErrServerRestarted, key, w.restartedTo, ErrUnknownHandoff), false
				}
				continue
			}
			switch e.Operation() {
			case jetstream.KeyValuePut:
				if done, err := accept(e); done || err != nil {
					return err, false
				}
			default:
				return fmt.Errorf("%w: %s", ErrHandoffReleased, key), false
			}
		case ev := <-events:
			switch ev.Kind {
			case Closed:
				return ErrClosed, false
			case Reconnected:
				if ev.Restarted {
					w.restartedTo = ev.ServerID
				}
				return nil, true // re-watch: the old consumer may be gone
			}
		}
	}
}

// errWatchStalled: creating a watch took longer than Options.Timeout.
var errWatchStalled = errors.New("splitzip/nats: creating the watch stalled")

// startWatch creates a watch of key that lives as long as wctx. Creating it is a request to the server; one
// lost with a server that died would hold it until wctx ends, so after Options.Timeout the attempt is
// abandoned (cancel ends wctx) and errWatchStalled asks the caller to watch anew.
func (p *Plane) startWatch(wctx context.Context, cancel context.CancelFunc, key string) (jetstream.KeyWatcher, error) {
	type started struct {
		kw  jetstream.KeyWatcher
		err error
	}
	ch := make(chan started, 1)
	go func() {
		kw, err := p.handoffs.Watch(wctx, key)
		ch <- started{kw, err}
	}()
	t := time.NewTimer(p.opts.Timeout)
	defer t.Stop()
	select {
	case s := <-ch:
		return s.kw, s.err
	case <-t.C:
		cancel()
		if s := <-ch; s.kw != nil {
			_ = s.kw.Stop()
		}
		return nil, errWatchStalled
	}
}

// bucketMissing reports an error saying the bucket's stream does not exist (the KV watch reports it through
// the legacy JetStream API's error).
func bucketMissing(err error) bool {
	return errors.Is(err, natsgo.ErrStreamNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) ||
		errors.Is(err, jetstream.ErrBucketNotFound)
}

func (p *Plane) waitExpired(ctx context.Context, key string) error {
	return fmt.Errorf("%w: %s not published before the wait ended: %w", ErrUnknownHandoff, key, ctx.Err())
}
