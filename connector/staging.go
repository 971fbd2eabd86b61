package connector

import (
	"context"
	"fmt"
	"slices"
	"sync"
)

// staging bounds the host memory that holds encoded frames between encoding and the consumer's fetch.
//
// A handoff reserves the staging its frames can take, all of it, before its first frame is encoded, and
// reservations are granted in the order they were asked for. A handoff that holds staging therefore never waits
// for more: if each frame waited for its own share instead, handoffs that each held part of the budget could all
// wait for one another — and for the consumers, which wait for their last frames — until their TTL ran out.
// Frames stay until the consumer's fetch completes (a reconnecting consumer may ask for any of them again).
//
// Buffers are kept for reuse, so a steady stream of handoffs allocates nothing once warm and never holds more
// than the budget.
type staging struct {
	mu      sync.Mutex
	cond    *sync.Cond
	budget  int64
	used    int64    // reserved, taken or not
	free    [][]byte // released buffers, any size; reused when big enough
	queue   []uint64 // reservations waiting, first come first served
	tickets uint64
	closed  bool
	mem     allocator
}

func newStaging(budget int64) *staging {
	s := &staging{budget: budget, mem: goAllocator{}}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// reservation is staging set aside for one handoff's frames.
type reservation struct {
	s    *staging
	left int64 // set aside and not yet taken
}

// ticket puts a handoff in line for a reservation; its reserve call redeems it. Taken when the handoff opens,
// so that handoffs are served in the order the engine began them, not in the order their workers started.
func (s *staging) ticket() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tickets
	s.tickets++
	s.queue = append(s.queue, t)
	return t
}

// reserve sets aside n bytes for the handoff holding ticket me, waiting while earlier tickets are in line or the
// budget is spent; waited says whether it had to. It fails at once for more than the whole budget, and when ctx
// ends or the staging closes; either way the ticket leaves the line.
func (s *staging) reserve(ctx context.Context, me uint64, n int64) (r *reservation, waited bool, err error) {
	stop := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	leave := func() {
		s.queue = slices.DeleteFunc(s.queue, func(t uint64) bool { return t == me })
		s.cond.Broadcast() // the next in line may fit now
	}
	if n > s.budget {
		leave()
		return nil, false, fmt.Errorf("%w: a handoff of %d bytes of frames exceeds the whole staging budget of %d bytes; raise it (staging_bytes)",
			ErrStagingFull, n, s.budget)
	}
	for {
		if s.closed {
			leave()
			return nil, waited, ErrClosed
		}
		if err := ctx.Err(); err != nil {
			leave()
			return nil, waited, fmt.Errorf("%w: waited for %d bytes (%d of %d in use, %d handoffs waiting): %w",
				ErrStagingFull, n, s.used, s.budget, len(s.queue)-1, err)
		}
		if s.queue[0] == me && s.used+n <= s.budget {
			break
		}
		waited = true
		s.cond.Wait()
	}
	s.queue = s.queue[1:]
	s.used += n
	s.cond.Broadcast()
	return &reservation{s: s, left: n}, waited, nil
}

// take returns a buffer of length n out of the reservation; it never waits.
func (r *reservation) take(n int) ([]byte, error) {
	if int64(n) > r.left {
		return nil, fmt.Errorf("splitzip: internal error: a %d-byte frame outgrows its handoff's staging (%d bytes left)", n, r.left)
	}
	s := r.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	b, err := s.buffer(n)
	if err != nil {
		return nil, err
	}
	r.left -= int64(n)
	return b, nil
}

// account counts n bytes of the reservation as taken by a frame staged elsewhere (in GPU memory, which the
// budget bounds too); releaseBytes gives them back. It never waits.
func (r *reservation) account(n int) error {
	if int64(n) > r.left {
		return fmt.Errorf("splitzip: internal error: a %d-byte frame outgrows its handoff's staging (%d bytes left)", n, r.left)
	}
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	if r.s.closed {
		return ErrClosed
	}
	r.left -= int64(n)
	return nil
}

// releaseBytes returns n bytes counted by account.
func (s *staging) releaseBytes(n int) {
	s.mu.Lock()
	s.used -= int64(n)
	s.cond.Broadcast()
	s.mu.Unlock()
}

// done returns what the handoff did not take; its frames are released one by one (release).
func (r *reservation) done() {
	s := r.s
	s.mu.Lock()
	s.used -= r.left
	r.left = 0
	s.cond.Broadcast()
	s.mu.Unlock()
}

// buffer finds or allocates a buffer of length n for bytes already counted in used. Called with s.mu held.
func (s *staging) buffer(n int) ([]byte, error) {
	for i, b := range s.free {
		if cap(b) >= n {
			s.free[i] = s.free[len(s.free)-1]
			s.free = s.free[:len(s.free)-1]
			return b[:n], nil
		}
	}
	// Drop free buffers that are too small while making room for a new one, so idle memory stays bounded.
	var idle int64
	for _, b := range s.free {
		idle += int64(cap(b))
	}
	for len(s.free) > 0 && idle+s.used > s.budget {
		idle -= int64(cap(s.free[0]))
		s.mem.free(s.free[0])
		s.free = s.free[1:]
	}
	b, err := s.mem.alloc(n)
	if err != nil && len(s.free) > 0 {
		// An arena allocator (NIXL's registered staging) may be fragmented by idle buffers: give them all
		// back and try once more.
		for _, f := range s.free {
			s.mem.free(f)
		}
		s.free = nil
		b, err = s.mem.alloc(n)
	}
	return b, err
}

// setAllocator switches where new buffers come from; idle buffers of the old allocator are freed.
func (s *staging) setAllocator(a allocator) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, b := range s.free {
		s.mem.free(b)
	}
	s.free = nil
	s.mem = a
}

// release returns a buffer obtained from a reservation (take).
func (s *staging) release(b []byte) {
	if b == nil {
		return
	}
	s.mu.Lock()
	s.used -= int64(len(b))
	s.free = append(s.free, b[:cap(b)])
	s.cond.Broadcast()
	s.mu.Unlock()
}

// inUse is the number of bytes reserved, taken or not.
func (s *staging) inUse() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.used
}

func (s *staging) close() {
	s.mu.Lock()
	s.closed = true
	for _, b := range s.free {
		s.mem.free(b)
	}
	s.free = nil
	s.cond.Broadcast()
	s.mu.Unlock()
}
