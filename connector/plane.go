package connector

import (
	"context"
	"errors"

	szn "github.com/splitzip/splitzip/nats"
)

// ControlPlane is what producers and consumers coordinate through: a *nats.Plane (embedded server by default,
// or an external NATS by URL). Only metadata goes through it.
type ControlPlane interface {
	plane() controlPlane
}

// Plane adapts a *nats.Plane for NewProducer and NewConsumer.
func Plane(p *szn.Plane) ControlPlane { return natsPlane{p} }

// shardRecord is one rank's part of a handoff: published when the save begins (so a consumer can fetch while
// layers are still being encoded) and again, complete with every frame's size and CRC32C, when it ends.
type shardRecord = szn.ShardRecord

type completion = szn.Completion

// recordGone reports that a record was withdrawn or purged: the producer released the handoff.
func recordGone(err error) bool {
	return errors.Is(err, szn.ErrUnknownHandoff) || errors.Is(err, szn.ErrHandoffReleased)
}

type controlPlane interface {
	publish(ctx context.Context, r *shardRecord) error
	wait(ctx context.Context, id string, rank int, complete bool) (*shardRecord, error)
	remove(ctx context.Context, id string, rank int) error
	notifyDone(ctx context.Context, producer string, c completion) error
	subscribeDone(engineID string, rank int, fn func(completion)) (func() error, error)
}

type natsPlane struct{ p *szn.Plane }

func (n natsPlane) plane() controlPlane { return n }

func (n natsPlane) publish(ctx context.Context, r *shardRecord) error { return n.p.PutShard(ctx, r) }

func (n natsPlane) wait(ctx context.Context, id string, rank int, complete bool) (*shardRecord, error) {
	return n.p.WaitShard(ctx, id, rank, complete)
}

func (n natsPlane) remove(ctx context.Context, id string, rank int) error {
	return n.p.DeleteShard(ctx, id, rank)
}

func (n natsPlane) notifyDone(ctx context.Context, producer string, c completion) error {
	return n.p.NotifyDone(ctx, producer, c)
}

func (n natsPlane) subscribeDone(engineID string, rank int, fn func(completion)) (func() error, error) {
	return n.p.SubscribeCompletions(engineID, rank, func(c szn.Completion) error { fn(c); return nil })
}

// newHandoffID returns 128 random bits, URL-safe: the id is the capability to fetch the payload.
func newHandoffID() string { return szn.NewHandoffID() }
