package connector

import (
	"context"
	"errors"

	szn "github.com/splitzip/splitzip/nats"
)

// ControlPlane is what producers and consumers coordinate through: metadata only, never payloads. A
// *nats.Plane is one (an embedded NATS server by default, or an external one by URL); tests use an in-memory
// one to produce failures a real server hardly gives.
//
// Each producer and consumer serves one tensor-parallel rank and deals only with that rank's shard record of
// a handoff; see package nats for the life cycle and the errors each method returns.
type ControlPlane interface {
	// PutShard publishes a shard record: the open one when a save begins, the complete one (every frame's
	// size and CRC32C) when its last layer is staged.
	PutShard(ctx context.Context, rec *szn.ShardRecord) error
	// WaitShard returns rank's shard of handoff id once it is published (with complete, its complete
	// version). A withdrawn record gives nats.ErrHandoffReleased, one never seen before ctx ends
	// nats.ErrUnknownHandoff.
	WaitShard(ctx context.Context, id string, rank int, complete bool) (*szn.ShardRecord, error)
	// DeleteShard withdraws rank's shard of handoff id once its payload is released.
	DeleteShard(ctx context.Context, id string, rank int) error
	// NotifyDone tells the producer engine how a consumer's load of one rank ended.
	NotifyDone(ctx context.Context, producerEngineID string, c szn.Completion) error
	// SubscribeCompletions delivers the notices sent to engineID's rank until unsubscribe is called.
	SubscribeCompletions(engineID string, rank int, handler func(szn.Completion) error) (unsubscribe func() error, err error)
}

var _ ControlPlane = (*szn.Plane)(nil)

// shardRecord is one rank's part of a handoff: published when the save begins (so a consumer can fetch while
// layers are still being encoded) and again, complete with every frame's size and CRC32C, when it ends.
type shardRecord = szn.ShardRecord

type completion = szn.Completion

// recordGone reports that a record was withdrawn or purged: the producer released the handoff.
func recordGone(err error) bool {
	return errors.Is(err, szn.ErrUnknownHandoff) || errors.Is(err, szn.ErrHandoffReleased)
}

// newHandoffID returns 128 random bits, URL-safe: the id is the capability to fetch the payload.
func newHandoffID() string { return szn.NewHandoffID() }
