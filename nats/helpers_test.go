package nats

import (
	"context"
	"hash/crc32"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// newPlane connects with opts (an embedded server unless WithURL is given)
// and closes the Plane when the test ends.
func newPlane(t *testing.T, opts ...Option) *Plane {
	t.Helper()
	p, err := Connect(opts...)
	require.NoError(t, err)
	t.Cleanup(p.Close)
	return p
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// quickCtx bounds one call inside a polling condition.
func quickCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	t.Cleanup(cancel)
	return ctx
}

// sampleShard builds a valid open shard record of a fresh handoff: rank of tp ranks, layers layers of 4 blocks
// in frames of 2 blocks.
func sampleShard(producer string, rank, tp, layers int) *ShardRecord {
	return &ShardRecord{
		HandoffID:         NewHandoffID(),
		RequestID:         "req-1",
		ProducerEngineID:  producer,
		Rank:              rank,
		TPSize:            tp,
		Addr:              "127.0.0.1:4000" + string(rune('0'+rank)),
		LayoutFingerprint: "llama3-8b/bs16/kv8x128/l32/tp2",
		DType:             "bfloat16",
		Layers:            layers,
		Blocks:            4,
		BlocksPerFrame:    2,
		Frames:            2 * layers,
	}
}

// completed returns the complete version of open shard s: a size and CRC32C per frame.
func completed(s *ShardRecord) *ShardRecord {
	c := *s
	c.Complete = true
	c.CreatedAt, c.ExpiresAt = time.Time{}, time.Time{}
	table := crc32.MakeTable(crc32.Castagnoli)
	c.FrameSizes, c.Checksums, c.RawBytes = nil, nil, 0
	for f := 0; f < s.Frames; f++ {
		n := uint64(1000 + 10*f + s.Rank)
		c.FrameSizes = append(c.FrameSizes, n)
		c.Checksums = append(c.Checksums, crc32.Checksum([]byte{byte(f), byte(s.Rank)}, table))
		c.RawBytes += 2 * n
	}
	return &c
}

// consumers returns the number of JetStream consumers on the handoff bucket's
// stream: a WaitShard in progress holds one (once the record was not there at its first read).
func consumers(t *testing.T, p *Plane) int {
	t.Helper()
	s, err := p.js.Stream(testCtx(t), "KV_"+p.handoffBucket)
	require.NoError(t, err)
	info, err := s.Info(testCtx(t))
	require.NoError(t, err)
	return info.State.Consumers
}

// eventLog collects connection events.
type eventLog struct{ ch chan ConnEvent }

func watchEvents(t *testing.T, p *Plane) *eventLog {
	l := &eventLog{ch: make(chan ConnEvent, 64)}
	remove := p.OnConnEvent(func(ev ConnEvent) {
		select {
		case l.ch <- ev:
		default:
		}
	})
	t.Cleanup(remove)
	return l
}

// next waits for the next event of kind.
func (l *eventLog) next(t *testing.T, kind ConnEventKind) ConnEvent {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case ev := <-l.ch:
			if ev.Kind == kind {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %v event", kind)
		}
	}
}
