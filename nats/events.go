package nats

import (
	"context"
	"fmt"
	"time"

	natsgo "github.com/nats-io/nats.go"
)

// ConnEventKind tells what happened to the connection.
type ConnEventKind int

const (
	// Disconnected: the connection to the server was lost; the client is
	// reconnecting (Options.MaxReconnects, Options.ReconnectWait).
	Disconnected ConnEventKind = iota + 1
	// Reconnected: the client is connected again. ConnEvent.Restarted tells
	// whether it is a different server instance than before.
	Reconnected
	// Closed: the connection is closed for good (Close, or reconnects
	// exhausted).
	Closed
)

func (k ConnEventKind) String() string {
	switch k {
	case Disconnected:
		return "disconnected"
	case Reconnected:
		return "reconnected"
	case Closed:
		return "closed"
	}
	return fmt.Sprintf("ConnEventKind(%d)", int(k))
}

// ConnEvent describes a change of the connection state.
type ConnEvent struct {
	Kind ConnEventKind
	// Epoch is the connection epoch after the event (see Plane.Epoch).
	Epoch uint64
	// ServerID is the server connected now (Reconnected) or last (others).
	ServerID string
	// PrevServerID is the server connected before a Reconnected event.
	PrevServerID string
	// Restarted is true on Reconnected when ServerID differs from
	// PrevServerID: the server restarted or the client failed over.
	Restarted bool
	// Err is the cause of a Disconnected event, when known.
	Err error
}

// OnConnEvent registers fn to be called, in order, on every connection event;
// the returned function removes it. fn runs on the NATS client's callback
// goroutine and must not block.
func (p *Plane) OnConnEvent(fn func(ConnEvent)) (remove func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	id := p.nextListener
	p.nextListener++
	p.listeners[id] = fn
	return func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		delete(p.listeners, id)
	}
}

// Epoch is the connection epoch: the number of disconnects seen so far.
// Record it when a handoff starts and pass it to CheckEpoch when the handoff
// finishes (or on any error) to learn whether the control plane was
// interrupted meanwhile.
func (p *Plane) Epoch() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.epoch
}

// CheckEpoch reports what happened to the connection since epoch (a value
// returned by Epoch): nil if nothing, an error wrapping ErrServerRestarted if
// the client has since reconnected to a different server instance (records
// in memory storage, and file-storage records not yet flushed, may be lost),
// ErrDisconnected if it was disconnected (and may still be), ErrClosed after
// Close.
func (p *Plane) CheckEpoch(epoch uint64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.closed:
		return ErrClosed
	case p.restartEpoch > epoch:
		return fmt.Errorf("%w: server changed to %s after epoch %d", ErrServerRestarted, p.serverID, epoch)
	case p.epoch > epoch:
		return fmt.Errorf("%w: %d disconnect(s) since epoch %d", ErrDisconnected, p.epoch-epoch, epoch)
	}
	return nil
}

func (p *Plane) emit(ev ConnEvent) {
	p.mu.Lock()
	fns := make([]func(ConnEvent), 0, len(p.listeners))
	for _, fn := range p.listeners {
		fns = append(fns, fn)
	}
	p.mu.Unlock()
	for _, fn := range fns {
		fn(ev)
	}
}

func (p *Plane) onDisconnect(_ *natsgo.Conn, err error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.epoch++
	ev := ConnEvent{Kind: Disconnected, Epoch: p.epoch, ServerID: p.serverID, Err: err}
	p.mu.Unlock()
	p.emit(ev)
}

func (p *Plane) onReconnect(nc *natsgo.Conn) {
	p.mu.Lock()
	prev := p.serverID
	p.serverID = nc.ConnectedServerId()
	ev := ConnEvent{Kind: Reconnected, Epoch: p.epoch, ServerID: p.serverID, PrevServerID: prev,
		Restarted: p.serverID != prev}
	if ev.Restarted {
		p.restartEpoch = p.epoch
	}
	closed := p.closed
	if ev.Restarted && !closed {
		p.wg.Add(1)
		go p.repairAfterRestart()
	}
	p.mu.Unlock()
	if !closed {
		p.emit(ev)
	}
}

func (p *Plane) onClosed(*natsgo.Conn) {
	p.mu.Lock()
	ev := ConnEvent{Kind: Closed, Epoch: p.epoch, ServerID: p.serverID}
	p.mu.Unlock()
	p.emit(ev)
}

// repairAfterRestart recreates the buckets (lost with memory storage or a
// fresh store directory) and refreshes engine registrations at once, retrying
// until it succeeds, the connection drops again or the Plane closes.
func (p *Plane) repairAfterRestart() {
	defer p.wg.Done()
	retry := time.NewTimer(0)
	defer retry.Stop()
	for {
		select {
		case <-p.done:
			return
		case <-retry.C:
		}
		ctx, cancel := context.WithTimeout(p.bg, p.opts.Timeout)
		_, _, err := p.ensureBuckets(ctx)
		cancel()
		if err == nil {
			p.kickHeartbeats()
			return
		}
		if !p.nc.IsConnected() {
			return // the next reconnect starts another repair
		}
		retry.Reset(p.opts.ReconnectWait)
	}
}
