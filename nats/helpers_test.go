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

// sampleRecord builds a valid record with tp ranks of layers frames each.
func sampleRecord(producer string, tp, layers int) *HandoffRecord {
	table := crc32.MakeTable(crc32.Castagnoli)
	rec := &HandoffRecord{
		RequestID:         "req-1",
		ProducerEngineID:  producer,
		LayoutFingerprint: "llama3-8b/bs16/kv8x128/l32/tp2",
		DType:             "bfloat16",
	}
	for r := 0; r < tp; r++ {
		rr := RankRecord{Rank: r, Addr: "127.0.0.1:4000" + string(rune('0'+r))}
		for l := 0; l < layers; l++ {
			n := uint64(1000 + 10*l + r)
			rr.FrameSizes = append(rr.FrameSizes, n)
			rr.Checksums = append(rr.Checksums, crc32.Checksum([]byte{byte(l), byte(r)}, table))
			rr.EncodedBytes += n
			rr.RawBytes += 2 * n
		}
		rec.Ranks = append(rec.Ranks, rr)
	}
	return rec
}

// consumers returns the number of JetStream consumers on the handoff bucket's
// stream: a WaitHandoff in progress holds one.
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
