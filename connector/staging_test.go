package connector

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// reserveAsync asks for a reservation in the background; the channel gets it, or the error.
func reserveAsync(ctx context.Context, s *staging, t uint64, n int64) <-chan any {
	ch := make(chan any, 1)
	go func() {
		r, _, err := s.reserve(ctx, t, n)
		if err != nil {
			ch <- err
			return
		}
		ch <- r
	}()
	return ch
}

func requireWaiting(t *testing.T, ch <-chan any, what string) {
	t.Helper()
	select {
	case got := <-ch:
		t.Fatalf("%s: want it waiting, got %v", what, got)
	case <-time.After(50 * time.Millisecond):
	}
}

func requireGranted(t *testing.T, ch <-chan any, what string) *reservation {
	t.Helper()
	select {
	case got := <-ch:
		r, ok := got.(*reservation)
		require.True(t, ok, "%s: %v", what, got)
		return r
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: still waiting", what)
		return nil
	}
}

// Reservations are served in ticket order: a small one that would fit waits behind a large one that does not.
func TestStagingReservesInOrder(t *testing.T) {
	ctx := context.Background()
	s := newStaging(100)
	a, waited, err := s.reserve(ctx, s.ticket(), 60)
	require.NoError(t, err)
	require.False(t, waited, "the budget was free")
	b := reserveAsync(ctx, s, s.ticket(), 60)
	requireWaiting(t, b, "60 bytes while 60 of 100 are reserved")
	c := reserveAsync(ctx, s, s.ticket(), 30)
	requireWaiting(t, c, "30 bytes behind a waiting reservation")

	buf, err := a.take(50)
	require.NoError(t, err)
	require.Len(t, buf, 50)
	_, err = a.take(11)
	require.ErrorContains(t, err, "outgrows its handoff's staging", "more than the reservation holds")
	a.done() // the 10 bytes not taken go back; the frame stays
	require.EqualValues(t, 50, s.inUse())
	requireWaiting(t, b, "60 bytes while a 50-byte frame is held")
	s.release(buf)
	rb := requireGranted(t, b, "first in line, once the frame is released")
	rc := requireGranted(t, c, "second in line, fitting beside the first")
	require.EqualValues(t, 90, s.inUse())
	rb.done()
	rc.done()
	require.Zero(t, s.inUse())
}

// A reservation larger than the whole budget fails at once, and one that gives up waiting (its handoff expired)
// leaves the line: neither holds up those behind it.
func TestStagingReservationsThatFailLeaveTheLine(t *testing.T) {
	s := newStaging(100)
	held, _, err := s.reserve(context.Background(), s.ticket(), 80)
	require.NoError(t, err)

	big := s.ticket()
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := reserveAsync(ctx, s, s.ticket(), 50)
	next := reserveAsync(context.Background(), s, s.ticket(), 10)
	_, _, err = s.reserve(context.Background(), big, 101)
	require.ErrorIs(t, err, ErrStagingFull)
	require.ErrorContains(t, err, "exceeds the whole staging budget of 100 bytes")
	requireWaiting(t, next, "behind a waiting reservation")
	cancel()
	select {
	case got := <-gaveUp:
		require.ErrorIs(t, got.(error), ErrStagingFull)
		require.ErrorIs(t, got.(error), context.Canceled)
	case <-time.After(5 * time.Second):
		t.Fatal("a cancelled reservation still waits")
	}
	requireGranted(t, next, "once the two before it left the line").done()
	held.done()

	closing := s.ticket()
	s.close()
	_, _, err = s.reserve(context.Background(), closing, 1)
	require.ErrorIs(t, err, ErrClosed)
}

// Two handoffs saved layer by layer, interleaved, with staging for one and a little more. If each frame waited
// for its own staging, both would hold half of it and wait for the other half until their TTL; a handoff takes
// all its staging first instead, so the second one waits until the first is fetched, and both arrive.
func TestInterleavedHandoffsShareStagingWithoutDeadlock(t *testing.T) {
	const ttl = 3 * time.Second
	l := smallLayout(8)
	frameBytes := l.layerRawBytes(4) // one frame a layer
	need := (&save{f: newFraming(&l, 4, frameBytes), path: pathRaw}).stagingNeed(&l)
	budget := need + need/int64(l.Layers) // one handoff and one frame more
	plane := startPlane(t)
	p, c := newPair(t, plane, []Option{WithBypass(BypassAlways), WithFrameBytes(frameBytes), WithStagingBytes(budget),
		WithHandoffTTL(ttl)}, nil)
	src := newTestCache(t, l, true, 0)
	dst := newTestCache(t, l, false, 0)
	require.NoError(t, p.RegisterHostCache(l, src.bases))
	require.NoError(t, c.RegisterHostCache(l, dst.bases))
	waiter := newLoadWaiter(t, c)

	blocks := map[string][]int{"a": {0, 1, 2, 3}, "b": {4, 5, 6, 7}}
	handoffs := map[string]Handoff{}
	for _, req := range []string{"a", "b"} {
		h, err := p.Begin(req, blocks[req])
		require.NoError(t, err)
		handoffs[req] = h
	}
	half := l.Layers / 2
	saveLayers := func(req string, from, to int) {
		for li := from; li < to; li++ {
			require.NoError(t, p.SaveLayer(req, li))
		}
	}
	saveLayers("a", 0, half)
	require.Eventually(t, func() bool { return p.StagingInUse() >= need/2 }, 5*time.Second, time.Millisecond)
	saveLayers("b", 0, half)
	time.Sleep(50 * time.Millisecond) // per-frame staging would now hold half of each handoff
	saveLayers("a", half, l.Layers)
	saveLayers("b", half, l.Layers)

	results := map[string]<-chan error{}
	for _, req := range []string{"a", "b"} {
		results[req] = waiter.expect(req)
		require.NoError(t, c.Load(req, handoffs[req], blocks[req]))
	}
	for _, req := range []string{"a", "b"} {
		select {
		case err := <-results[req]:
			require.NoError(t, err, "load of %s", req)
		case <-time.After(ttl + 5*time.Second):
			t.Fatalf("load of %s did not end", req)
		}
		requireSameBlocks(t, src, blocks[req], dst, blocks[req])
	}
	st := p.Stats()
	require.Zero(t, st.Expired, "handoffs expired")
	require.EqualValues(t, 1, st.StagingWaits, "the second handoff waited for the first one's staging")
	require.Positive(t, st.StagingWait)
	require.Eventually(t, func() bool { return p.InFlight() == 0 && p.StagingInUse() == 0 }, 10*time.Second, 5*time.Millisecond)
}

// A handoff whose frames can never fit the staging budget fails at once with ErrStagingFull (not at its TTL),
// the engine's later layers are refused with that cause, and the producer goes on with the next one.
func TestHandoffLargerThanStagingFailsAtOnce(t *testing.T) {
	l := smallLayout(8)
	need := (&save{f: newFraming(&l, 8, 8<<20), path: pathRaw}).stagingNeed(&l)
	plane := startPlane(t)
	p, c := newPair(t, plane, []Option{WithBypass(BypassAlways), WithStagingBytes(need - 1), WithHandoffTTL(time.Minute)}, nil)
	src := newTestCache(t, l, true, 0)
	dst := newTestCache(t, l, false, 0)
	require.NoError(t, p.RegisterHostCache(l, src.bases))
	require.NoError(t, c.RegisterHostCache(l, dst.bases))

	all := []int{0, 1, 2, 3, 4, 5, 6, 7}
	t0 := time.Now()
	_, err := p.Save("big", all)
	if err != nil { // the save may fail before Save has queued every layer: Save then says so
		require.ErrorIs(t, err, ErrStagingFull)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = p.WaitSaved(ctx, "big")
	require.ErrorIs(t, err, ErrStagingFull)
	require.ErrorContains(t, err, "exceeds the whole staging budget")
	require.False(t, errors.Is(err, context.DeadlineExceeded))
	require.Less(t, time.Since(t0), 10*time.Second)

	// Layers the engine saves after the failure are refused with its cause, not as a layout error.
	_, err = p.Begin("big2", all)
	require.NoError(t, err)
	require.ErrorIs(t, p.WaitSaved(ctx, "big2"), ErrStagingFull)
	err = p.SaveLayer("big2", 0)
	require.ErrorIs(t, err, ErrStagingFull)
	require.NotErrorIs(t, err, ErrLayout)
	require.ErrorContains(t, err, "its save already failed")

	h, err := p.Save("small", all[:4])
	require.NoError(t, err)
	require.NoError(t, c.Load("small", h, all[:4]))
	require.NoError(t, waitLoad(t, c, "small"))
	requireSameBlocks(t, src, all[:4], dst, all[:4])
}

// Sixteen handoffs in flight at a time, saved layer by layer while the others are, with staging for three: every
// load arrives bit-exact, none expires, and the staging is all free at the end. (With a wait per frame, the
// handoffs soon each hold part of the staging and wait for one another until their TTL.)
func TestStagingUnderPressureManyInFlight(t *testing.T) {
	const inFlight, per = 16, 4
	rounds := 12
	if testing.Short() || raceEnabled {
		rounds = 4
	}
	l := smallLayout(inFlight * per)
	l.Layers = 8
	frameBytes := l.layerRawBytes(per)
	need := (&save{f: newFraming(&l, per, frameBytes), path: pathRaw}).stagingNeed(&l)
	plane := startPlane(t)
	p, c := newPair(t, plane, []Option{WithBypass(BypassAlways), WithFrameBytes(frameBytes), WithStagingBytes(3 * need),
		WithHandoffTTL(10 * time.Second)}, nil)
	src := newTestCache(t, l, true, 0)
	dst := newTestCache(t, l, false, 0)
	require.NoError(t, p.RegisterHostCache(l, src.bases))
	require.NoError(t, c.RegisterHostCache(l, dst.bases))
	waiter := newLoadWaiter(t, c)

	errs := make(chan error, inFlight)
	for w := range inFlight {
		blocks := make([]int, per)
		for i := range blocks {
			blocks[i] = w*per + i
		}
		go func() {
			for r := range rounds {
				req := fmt.Sprintf("w%d-r%d", w, r)
				res := waiter.expect(req)
				h, err := p.Begin(req, blocks)
				for li := 0; err == nil && li < l.Layers; li++ {
					err = p.SaveLayer(req, li)
					runtime.Gosched() // the other workers' layers come in between
				}
				if err == nil {
					err = c.Load(req, h, blocks)
				}
				if err == nil {
					err = <-res
				}
				if err != nil {
					errs <- fmt.Errorf("%s: %w", req, err)
					return
				}
			}
			errs <- nil
		}()
	}
	for range inFlight {
		select {
		case err := <-errs:
			require.NoError(t, err)
		case <-time.After(2 * time.Minute):
			t.Fatal("handoffs still in flight after 2 minutes")
		}
	}
	requireSameBlocks(t, src, seq(inFlight*per), dst, seq(inFlight*per))
	require.Zero(t, p.Stats().Expired, "handoffs expired")
	require.Eventually(t, func() bool { return p.InFlight() == 0 && p.StagingInUse() == 0 }, 10*time.Second, 5*time.Millisecond)
}

func seq(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

// A handoff that waited for staging teaches auto nothing: its consumer dialled before its frames could be staged,
// so its transfer time is the producer's backlog, not the link's speed.
func TestHandoffThatWaitedForStagingDoesNotMeasureTheLink(t *testing.T) {
	const ttl = 2 * time.Second
	l := smallLayout(8)
	need := (&save{f: newFraming(&l, 4, 8<<20), path: pathRaw}).stagingNeed(&l)
	plane := startPlane(t)
	p, c := newPair(t, plane, []Option{WithBypass(BypassAlways), WithStagingBytes(need), WithHandoffTTL(ttl)}, nil)
	src := newTestCache(t, l, true, 0)
	dst := newTestCache(t, l, false, 0)
	require.NoError(t, p.RegisterHostCache(l, src.bases))
	require.NoError(t, c.RegisterHostCache(l, dst.bases))

	_, err := p.Save("unclaimed", []int{0, 1, 2, 3}) // holds all the staging until it expires
	require.NoError(t, err)
	time.Sleep(ttl / 2)
	h, err := p.Save("queued", []int{4, 5, 6, 7})
	require.NoError(t, err)
	require.NoError(t, c.Load("queued", h, []int{4, 5, 6, 7}))
	require.NoError(t, waitLoad(t, c, "queued"))
	requireSameBlocks(t, src, []int{4, 5, 6, 7}, dst, []int{4, 5, 6, 7})
	st := p.Stats()
	require.EqualValues(t, 1, st.StagingWaits)
	require.EqualValues(t, 1, st.Expired)
	require.Zero(t, p.Estimates().Link, "the only transfer waited for staging: the link is still unknown")
}
