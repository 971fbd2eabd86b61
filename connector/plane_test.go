package connector

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	szn "github.com/splitzip/splitzip/nats"
	"github.com/stretchr/testify/require"
)

// memPlane is a ControlPlane in memory, with hooks that make its operations fail the way a real NATS server
// seldom can on cue: a publish refused, a record that disagrees with the frames, a wait that errs.
type memPlane struct {
	// Hooks, set before use. put may fail a publish or alter the record stored; wait may fail a wait; del runs
	// before a record is deleted (and may hold the delete back).
	put  func(rec *szn.ShardRecord) error
	wait func(id string, rank int, complete bool) error
	del  func(id string, rank int)

	mu      sync.Mutex
	changed chan struct{} // closed and replaced at every change of records
	records map[string]*szn.ShardRecord
	deleted map[string]bool
	history map[string][]*szn.ShardRecord // every version of a key in order, nil for its delete (a watch's view)
	subs    map[string]func(szn.Completion) error
	puts    []szn.ShardRecord // every publish accepted, in order
	deletes int
	notices []szn.Completion // every notice delivered
}

var _ ControlPlane = (*memPlane)(nil)

func newMemPlane() *memPlane {
	return &memPlane{changed: make(chan struct{}), records: map[string]*szn.ShardRecord{}, deleted: map[string]bool{},
		history: map[string][]*szn.ShardRecord{}, subs: map[string]func(szn.Completion) error{}}
}

func memKey(id string, rank int) string { return id + ".r" + strconv.Itoa(rank) }

// PutShard stores a copy of rec, completed and validated as nats.Plane does.
func (m *memPlane) PutShard(_ context.Context, rec *szn.ShardRecord) error {
	if m.put != nil {
		if err := m.put(rec); err != nil {
			return err
		}
	}
	now := time.Now()
	rec.V = szn.ProtocolVersion
	if rec.CreatedAt.IsZero() {
		rec.CreatedAt = now
	}
	if rec.ExpiresAt.IsZero() {
		rec.ExpiresAt = rec.CreatedAt.Add(rec.TTL)
	}
	if rec.Complete {
		rec.EncodedBytes = 0
		for _, n := range rec.FrameSizes {
			rec.EncodedBytes += n
		}
	}
	if err := rec.Validate(); err != nil {
		return err
	}
	r := *rec
	r.FrameSizes = append([]uint64(nil), rec.FrameSizes...)
	r.Checksums = append([]uint32(nil), rec.Checksums...)
	key := memKey(rec.HandoffID, rec.Rank)
	m.mu.Lock()
	defer m.mu.Unlock()
	if !rec.Complete && (m.records[key] != nil || m.deleted[key]) {
		return fmt.Errorf("%w: %s", szn.ErrHandoffExists, key)
	}
	m.records[key] = &r
	m.history[key] = append(m.history[key], &r)
	m.puts = append(m.puts, r)
	m.broadcast()
	return nil
}

func (m *memPlane) broadcast() {
	close(m.changed)
	m.changed = make(chan struct{})
}

func (m *memPlane) WaitShard(ctx context.Context, id string, rank int, complete bool) (*szn.ShardRecord, error) {
	if m.wait != nil {
		if err := m.wait(id, rank, complete); err != nil {
			return nil, err
		}
	}
	// As a NATS KV watch: the key's latest version first, then every later one in order, so that a waiter
	// slower than a put and the delete after it still sees the put.
	key := memKey(id, rank)
	next := -1
	for {
		m.mu.Lock()
		h, changed := m.history[key], m.changed
		m.mu.Unlock()
		if next < 0 {
			next = max(len(h)-1, 0)
		}
		for ; next < len(h); next++ {
			switch r := h[next]; {
			case r == nil:
				return nil, fmt.Errorf("%w: %s", szn.ErrHandoffReleased, key)
			case r.Complete || !complete:
				c := *r
				return &c, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %s: %w", szn.ErrUnknownHandoff, key, ctx.Err())
		case <-changed:
		}
	}
}

func (m *memPlane) DeleteShard(_ context.Context, id string, rank int) error {
	if m.del != nil {
		m.del(id, rank)
	}
	key := memKey(id, rank)
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.records, key)
	m.deleted[key] = true
	m.history[key] = append(m.history[key], nil)
	m.deletes++
	m.broadcast()
	return nil
}

func (m *memPlane) NotifyDone(_ context.Context, producer string, c szn.Completion) error {
	m.mu.Lock()
	h := m.subs[memKey(producer, c.Rank)]
	m.mu.Unlock()
	if h == nil {
		return fmt.Errorf("%w: %s rank %d", szn.ErrUnknownEngine, producer, c.Rank)
	}
	c.V = szn.ProtocolVersion
	if err := h(c); err != nil {
		return fmt.Errorf("%w: %v", szn.ErrCompletionRejected, err)
	}
	m.mu.Lock()
	m.notices = append(m.notices, c)
	m.mu.Unlock()
	return nil
}

func (m *memPlane) SubscribeCompletions(engineID string, rank int, h func(szn.Completion) error) (func() error, error) {
	key := memKey(engineID, rank)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.subs[key] = h
	return func() error {
		m.mu.Lock()
		defer m.mu.Unlock()
		delete(m.subs, key)
		return nil
	}, nil
}

// memState is a snapshot of what the plane saw.
func (m *memPlane) state() (puts []szn.ShardRecord, deletes int, notices []szn.Completion) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]szn.ShardRecord(nil), m.puts...), m.deletes, append([]szn.Completion(nil), m.notices...)
}

// fakePair is a producer and a consumer on plane with host caches of 16 blocks.
func fakePair(t *testing.T, plane ControlPlane) (*Producer, *Consumer, *testCache, *testCache) {
	t.Helper()
	p, c := newPair(t, plane, []Option{WithFrameBytes(2 * 2 * 6144)}, []Option{WithRecordWait(time.Second)})
	src := newTestCache(t, smallLayout(16), true, 11)
	dst := newTestCache(t, smallLayout(16), false, 0)
	require.NoError(t, p.RegisterHostCache(src.layout, src.bases))
	require.NoError(t, c.RegisterHostCache(dst.layout, dst.bases))
	return p, c, src, dst
}

// requireReleased waits until the producer holds nothing of its handoffs.
func requireReleased(t *testing.T, p *Producer) {
	t.Helper()
	require.Eventually(t, func() bool { return p.InFlight() == 0 && p.StagingInUse() == 0 }, 10*time.Second, 5*time.Millisecond)
}

var errRefused = errors.New("publish refused")

// The open record's publish fails: Save says so, the producer withdraws the payload and frees its staging,
// no consumer can find the handoff, and the next handoff goes through.
func TestOpenRecordPublishFails(t *testing.T) {
	plane := newMemPlane()
	var fail sync.Once
	plane.put = func(rec *szn.ShardRecord) error {
		err := error(nil)
		if !rec.Complete {
			fail.Do(func() { err = errRefused })
		}
		return err
	}
	p, c, src, dst := fakePair(t, plane)

	_, err := p.Save("lost", []int{0, 1, 2})
	require.ErrorIs(t, err, errRefused)
	require.ErrorContains(t, err, "publishing handoff")
	requireReleased(t, p)
	require.NoError(t, p.WaitSaved(context.Background(), "lost"))
	require.Empty(t, p.FinishedSending(), "a Save that failed is not reported as sent: the engine saw the error")
	puts, _, _ := plane.state()
	require.Empty(t, puts, "nothing was published for the failed save")

	h, err := p.Save("next", []int{3, 4, 5})
	require.NoError(t, err)
	require.NoError(t, c.Load("next", h, []int{7, 8, 9}))
	require.NoError(t, waitLoad(t, c, "next"))
	requireSameBlocks(t, src, []int{3, 4, 5}, dst, []int{7, 8, 9})
	requireReleased(t, p)
}

// The complete record's publish fails: consumers see only the open record. The transfer still completes,
// every chunk verified by its CRC32C on the wire; the consumer stops waiting for the complete record once
// the producer withdraws the handoff, and the producer frees everything.
func TestCompleteRecordPublishFails(t *testing.T) {
	plane := newMemPlane()
	var refuse atomic.Bool
	refuse.Store(true)
	plane.put = func(rec *szn.ShardRecord) error {
		if rec.Complete && refuse.Load() {
			return errRefused
		}
		return nil
	}
	p, c, src, dst := fakePair(t, plane)
	h, err := p.Save("r", []int{0, 5, 9, 2})
	require.NoError(t, err)
	require.NoError(t, p.WaitSaved(context.Background(), "r"), "the save itself succeeded")
	require.NoError(t, c.Load("r", h, []int{1, 2, 3, 4}))
	require.NoError(t, waitLoad(t, c, "r"))
	requireSameBlocks(t, src, []int{0, 5, 9, 2}, dst, []int{1, 2, 3, 4})
	requireReleased(t, p)

	require.Eventually(t, func() bool {
		puts, deletes, notices := plane.state()
		return len(puts) == 1 && !puts[0].Complete && deletes == 1 && len(notices) == 1 && notices[0].OK
	}, 10*time.Second, 5*time.Millisecond, "one open record, withdrawn after the fetch; the consumer's notice says OK")
	require.Equal(t, int64(1), c.Stats().Unverified, "the load is counted as checked chunk by chunk only")

	// With the complete record published, loads are checked end to end.
	refuse.Store(false)
	h, err = p.Save("s", []int{1, 2})
	require.NoError(t, err)
	require.NoError(t, c.Load("s", h, []int{5, 6}))
	require.NoError(t, waitLoad(t, c, "s"))
	require.Equal(t, int64(1), c.Stats().Unverified)
}

// The consumer reads the completed record late (here 300 ms after it starts waiting for it): the record stays
// until the consumer's completion notice, so the load is still checked end to end, and then goes.
func TestCompleteRecordReadLate(t *testing.T) {
	plane := newMemPlane()
	plane.wait = func(_ string, _ int, complete bool) error {
		if complete {
			time.Sleep(300 * time.Millisecond)
		}
		return nil
	}
	p, c, src, dst := fakePair(t, plane)
	h, err := p.Save("r", []int{0, 5, 9, 2})
	require.NoError(t, err)
	require.NoError(t, c.Load("r", h, []int{1, 2, 3, 4}))
	require.NoError(t, waitLoad(t, c, "r"))
	requireSameBlocks(t, src, []int{0, 5, 9, 2}, dst, []int{1, 2, 3, 4})
	require.Zero(t, c.Stats().Unverified, "the completed record was there to check the frames against")
	require.Eventually(t, func() bool {
		_, deletes, notices := plane.state()
		return deletes == 1 && len(notices) == 1 && notices[0].OK
	}, 10*time.Second, 5*time.Millisecond, "the record goes once the consumer's notice came")
	requireReleased(t, p)
}

// The complete record disagrees with the frames received (a CRC32C the producer recorded differs): the load
// fails with ErrFrame, and the producer hears of it through the completion notice.
func TestCompleteRecordDisagrees(t *testing.T) {
	plane := newMemPlane()
	plane.put = func(rec *szn.ShardRecord) error {
		if rec.Complete {
			rec.Checksums = append([]uint32(nil), rec.Checksums...)
			rec.Checksums[len(rec.Checksums)-1] ^= 1
		}
		return nil
	}
	// The producer deletes the record once the transfer has ended, and a consumer that looks for the complete
	// record only after that finds it withdrawn and loads without the end-to-end check: its wait for the record
	// runs on a goroutine of its own, which a loaded machine can start late. The delete is held back until the
	// load has ended, so that the consumer checks what this test is about.
	loaded := make(chan struct{})
	var endLoad sync.Once
	plane.del = func(string, int) { <-loaded }
	defer endLoad.Do(func() { close(loaded) })
	p, c, _, _ := fakePair(t, plane)
	h, err := p.Save("r", []int{0, 1, 2, 3, 4})
	require.NoError(t, err)
	require.NoError(t, c.Load("r", h, []int{5, 6, 7, 8, 9}))
	err = waitLoad(t, c, "r")
	endLoad.Do(func() { close(loaded) })
	require.ErrorIs(t, err, ErrFrame)
	require.ErrorContains(t, err, "producer recorded")
	// The producer counts the notice inside its handler, before the plane records it as delivered.
	var notices []szn.Completion
	require.Eventually(t, func() bool {
		_, _, notices = plane.state()
		return p.Stats().Failed == 1 && len(notices) == 1
	}, 10*time.Second, 5*time.Millisecond, "the failure notice reached the producer")
	require.False(t, notices[0].OK)
	require.Contains(t, notices[0].Err, "producer recorded")
	requireReleased(t, p)
}

// The wait for the complete record fails for another reason than a withdrawn record (here the control plane
// lost its connection): the frames cannot be checked end to end, so the load fails and says why.
func TestCompleteRecordWaitFails(t *testing.T) {
	plane := newMemPlane()
	plane.wait = func(_ string, _ int, complete bool) error {
		if complete {
			return fmt.Errorf("%w: connection lost", szn.ErrDisconnected)
		}
		return nil
	}
	p, c, _, _ := fakePair(t, plane)
	h, err := p.Save("r", []int{0, 1})
	require.NoError(t, err)
	require.NoError(t, c.Load("r", h, []int{2, 3}))
	err = waitLoad(t, c, "r")
	require.ErrorIs(t, err, szn.ErrDisconnected)
	require.ErrorContains(t, err, "completed record")
	require.Eventually(t, func() bool {
		_, _, notices := plane.state()
		return len(notices) == 1 && !notices[0].OK
	}, 10*time.Second, 5*time.Millisecond)
	requireReleased(t, p)
}

// The record is not found: the load fails with ErrUnknownHandoff and, not knowing the producer, sends no
// notice.
func TestRecordNotFound(t *testing.T) {
	plane := newMemPlane()
	_, c, _, _ := fakePair(t, plane)
	id := szn.NewHandoffID()
	plane.wait = func(got string, _ int, _ bool) error {
		if got == id {
			return fmt.Errorf("%w: %s", szn.ErrUnknownHandoff, got)
		}
		return nil
	}
	require.NoError(t, c.Load("r", Handoff{ID: id, Secret: NewHandoffSecret()}, []int{0}))
	err := waitLoad(t, c, "r")
	require.ErrorIs(t, err, szn.ErrUnknownHandoff)
	require.Equal(t, int64(1), c.Stats().Failed)
	_, _, notices := plane.state()
	require.Empty(t, notices)
}

func TestNilControlPlane(t *testing.T) {
	_, err := NewProducer(nil, WithEngineID("p"))
	require.ErrorIs(t, err, ErrOption)
	_, err = NewConsumer(nil, WithEngineID("c"))
	require.ErrorIs(t, err, ErrOption)
}
