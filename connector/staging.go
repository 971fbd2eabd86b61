package connector

import (
	"context"
	"fmt"
	"sync"
)

// staging bounds the host memory that holds encoded frames between encoding and the consumer's fetch. Acquire
// blocks while the budget is spent (backpressure on the producer) and fails when the context ends; buffers are
// kept for reuse, so a steady stream of handoffs allocates nothing once warm and never holds more than the
// budget.
type staging struct {
	mu     sync.Mutex
	cond   *sync.Cond
	budget int64
	used   int64
	free   [][]byte // released buffers, any size; reused when big enough
	closed bool
	mem    allocator
}

func newStaging(budget int64) *staging {
	s := &staging{budget: budget, mem: goAllocator{}}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// acquire returns a buffer of capacity ≥ n, waiting for budget.
func (s *staging) acquire(ctx context.Context, n int) ([]byte, error) {
	if int64(n) > s.budget {
		return nil, fmt.Errorf("%w: a %d-byte frame exceeds the whole staging budget of %d bytes; raise it", ErrStagingFull, n, s.budget)
	}
	stop := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if s.closed {
			return nil, ErrClosed
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("%w: waited for %d bytes (%d of %d in use): %v", ErrStagingFull, n, s.used, s.budget, err)
		}
		if s.used+int64(n) <= s.budget {
			break
		}
		s.cond.Wait()
	}
	s.used += int64(n)
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
	if err != nil {
		s.used -= int64(n)
		return nil, err
	}
	return b, nil
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

// release returns a buffer obtained from acquire.
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

// inUse is the number of bytes currently acquired.
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
