package nats

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Role is what an engine does in disaggregated serving.
type Role string

const (
	// RoleProducer engines run prefill and publish handoffs.
	RoleProducer Role = "producer"
	// RoleConsumer engines run decode and fetch handoffs.
	RoleConsumer Role = "consumer"
	// RoleBoth engines do both.
	RoleBoth Role = "both"
)

// Engine is an engine's entry in the registry.
type Engine struct {
	// V is the protocol version; RegisterEngine sets it.
	V int `json:"v"`
	// ID identifies the engine ([A-Za-z0-9_-], at most 128 characters).
	ID string `json:"id"`
	// Role is producer, consumer or both.
	Role Role `json:"role"`
	// Addr is the engine's payload (producer) or contact address, host:port.
	Addr string `json:"addr,omitempty"`
	// TPSize is the tensor-parallel size.
	TPSize int `json:"tp_size"`
	// LayoutFingerprint identifies the engine's KV layout.
	LayoutFingerprint string `json:"layout"`
	// DType is the KV cache element type.
	DType string `json:"dtype,omitempty"`
	// StartedAt is when the engine registered; RegisterEngine sets it.
	StartedAt time.Time `json:"started_at"`
	// LastSeen is the time of the latest heartbeat.
	LastSeen time.Time `json:"last_seen"`
	// Meta carries optional application data.
	Meta map[string]string `json:"meta,omitempty"`
}

// Validate checks the entry. Errors wrap ErrInvalidRecord or
// ErrIncompatibleVersion.
func (e *Engine) Validate() error {
	if err := checkVersion("engine record", e.V); err != nil {
		return err
	}
	if err := ValidEngineID(e.ID); err != nil {
		return err
	}
	switch e.Role {
	case RoleProducer, RoleConsumer, RoleBoth:
	default:
		return fmt.Errorf("%w: engine %s: role %q: want producer, consumer or both", ErrInvalidRecord, e.ID, e.Role)
	}
	if e.TPSize < 1 {
		return fmt.Errorf("%w: engine %s: tensor-parallel size %d", ErrInvalidRecord, e.ID, e.TPSize)
	}
	if e.LayoutFingerprint == "" {
		return fmt.Errorf("%w: engine %s: empty layout fingerprint", ErrInvalidRecord, e.ID)
	}
	return nil
}

// registration is a live engine entry refreshed by a heartbeat goroutine.
type registration struct {
	id   string
	rec  Engine
	kick chan struct{} // refresh now (after a server restart)
	stop chan struct{} // closed by deregister
}

// RegisterEngine puts e in the registry (setting V, StartedAt, LastSeen) and
// refreshes it every EngineTTL/3 until deregister is called or the Plane is
// closed (Close deregisters too). An engine that stops heartbeating vanishes
// after EngineTTL. Registering an id twice on one Plane is an error; another
// Plane registering the same id overwrites the entry.
func (p *Plane) RegisterEngine(ctx context.Context, e Engine) (deregister func(context.Context) error, err error) {
	if err := p.checkOpen(); err != nil {
		return nil, err
	}
	now := time.Now()
	e.V = ProtocolVersion
	e.StartedAt, e.LastSeen = now, now
	if err := e.Validate(); err != nil {
		return nil, err
	}
	r := &registration{id: e.ID, rec: e, kick: make(chan struct{}, 1), stop: make(chan struct{})}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrClosed
	}
	if _, dup := p.regs[e.ID]; dup {
		p.mu.Unlock()
		return nil, fmt.Errorf("%w: engine %s already registered by this Plane", ErrInvalidRecord, e.ID)
	}
	p.regs[e.ID] = r
	p.mu.Unlock()
	if err := p.putEngine(ctx, &r.rec); err != nil {
		p.mu.Lock()
		delete(p.regs, e.ID)
		p.mu.Unlock()
		return nil, err
	}
	p.wg.Add(1)
	go p.heartbeat(r)
	var once bool
	return func(ctx context.Context) error {
		p.mu.Lock()
		if once || p.regs[r.id] != r {
			p.mu.Unlock()
			return nil
		}
		once = true
		delete(p.regs, r.id)
		p.mu.Unlock()
		close(r.stop)
		if err := p.checkOpen(); err != nil {
			return nil // Close already removed it
		}
		ctx, cancel := p.opCtx(ctx)
		defer cancel()
		if err := p.engines.Delete(ctx, r.id); err != nil {
			return p.wrap("deregistering engine "+r.id, err)
		}
		return nil
	}, nil
}

func (p *Plane) putEngine(ctx context.Context, e *Engine) error {
	data, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("%w: encoding engine %s: %v", ErrInvalidRecord, e.ID, err)
	}
	ctx, cancel := p.opCtx(ctx)
	defer cancel()
	if _, err := p.engines.Put(ctx, e.ID, data); err != nil {
		return p.wrap("registering engine "+e.ID, err)
	}
	return nil
}

// heartbeat refreshes r until it is deregistered or the Plane closes. Failed
// refreshes (server away) are retried at the next tick.
func (p *Plane) heartbeat(r *registration) {
	defer p.wg.Done()
	t := time.NewTicker(p.opts.EngineTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-p.done:
			return
		case <-r.stop:
			return
		case <-t.C:
		case <-r.kick:
		}
		r.rec.LastSeen = time.Now()
		_ = p.putEngine(p.bg, &r.rec)
	}
}

// kickHeartbeats makes every registration refresh now.
func (p *Plane) kickHeartbeats() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.regs {
		select {
		case r.kick <- struct{}{}:
		default:
		}
	}
}

// Engines lists the registered engines, sorted by id. Entries written with an
// incompatible protocol version or malformed are left out.
func (p *Plane) Engines(ctx context.Context) ([]Engine, error) {
	if err := p.checkOpen(); err != nil {
		return nil, err
	}
	ctx, cancel := p.opCtx(ctx)
	defer cancel()
	w, err := p.engines.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, p.wrap("listing engines", err)
	}
	defer func() { _ = w.Stop() }()
	var out []Engine
	for {
		select {
		case <-ctx.Done():
			return nil, p.wrap("listing engines", ctx.Err())
		case e, ok := <-w.Updates():
			if !ok || e == nil {
				sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
				return out, nil
			}
			var eng Engine
			if decode("engine record "+e.Key(), e.Value(), &eng) == nil && eng.Validate() == nil {
				out = append(out, eng)
			}
		}
	}
}

// LookupEngine returns the registry entry of id. Errors wrap ErrUnknownEngine,
// ErrIncompatibleVersion, ErrInvalidRecord or a connection sentinel.
func (p *Plane) LookupEngine(ctx context.Context, id string) (*Engine, error) {
	if err := p.checkOpen(); err != nil {
		return nil, err
	}
	if err := ValidEngineID(id); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnknownEngine, err)
	}
	ctx, cancel := p.opCtx(ctx)
	defer cancel()
	e, err := p.engines.Get(ctx, id)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, fmt.Errorf("%w: %s is not registered (or stopped heartbeating)", ErrUnknownEngine, id)
		}
		return nil, p.wrap("looking up engine "+id, err)
	}
	var eng Engine
	if err := decode("engine record "+id, e.Value(), &eng); err != nil {
		return nil, err
	}
	if err := eng.Validate(); err != nil {
		return nil, err
	}
	return &eng, nil
}
