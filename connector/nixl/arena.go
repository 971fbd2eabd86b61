package nixl

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"unsafe"
)

// arenaAlign is the alignment of every buffer an Arena hands out (and of their lengths): enough for the
// codec's vector loads and for GPU copies.
const arenaAlign = 256

// Arena hands out buffers from one registered host region: first fit over a free list kept sorted and
// coalesced. Memory is registered with NIXL once, as a whole, so that the metadata a peer loaded stays valid
// for every buffer (a registration made later would be unknown to the peer until it reloaded the metadata).
// It is safe for concurrent use.
type Arena struct {
	mem  []byte
	base uintptr

	mu    sync.Mutex
	free  []span      // sorted by offset, never adjacent
	used  map[int]int // offset → length of the buffers handed out
	inUse int
	wake  chan struct{} // closed and replaced whenever a buffer is freed
}

type span struct{ off, n int }

// NewArena returns an arena over mem (its first and last partial aligned units are not used).
func NewArena(mem []byte) *Arena {
	a := &Arena{mem: mem, used: map[int]int{}, wake: make(chan struct{})}
	if len(mem) > 0 {
		a.base = uintptr(unsafe.Pointer(&mem[0]))
		start := int((arenaAlign - a.base%arenaAlign) % arenaAlign)
		if n := (len(mem) - start) &^ (arenaAlign - 1); n > 0 {
			a.free = []span{{start, n}}
		}
	}
	return a
}

// Region is the arena's memory, for registration.
func (a *Arena) Region() Region { return Region{Addr: a.base, Len: len(a.mem), Mem: MemDRAM} }

// Size is the arena's length in bytes.
func (a *Arena) Size() int { return len(a.mem) }

// InUse is the bytes handed out and not yet freed.
func (a *Arena) InUse() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inUse
}

// Contains reports whether b lies inside the arena.
func (a *Arena) Contains(b []byte) bool {
	if len(b) == 0 || len(a.mem) == 0 {
		return false
	}
	p := uintptr(unsafe.Pointer(&b[0]))
	return p >= a.base && p+uintptr(len(b)) <= a.base+uintptr(len(a.mem))
}

// Alloc returns a buffer of length n (capacity rounded up to the alignment), or an error wrapping ErrArena
// when no free span is large enough.
func (a *Arena) Alloc(n int) ([]byte, error) {
	if n <= 0 {
		return nil, fmt.Errorf("%w: a %d-byte buffer", ErrOption, n)
	}
	need := (n + arenaAlign - 1) &^ (arenaAlign - 1)
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, s := range a.free {
		if s.n < need {
			continue
		}
		if s.n == need {
			a.free = append(a.free[:i], a.free[i+1:]...)
		} else {
			a.free[i] = span{s.off + need, s.n - need}
		}
		a.used[s.off] = need
		a.inUse += need
		return a.mem[s.off : s.off+n : s.off+need], nil
	}
	return nil, fmt.Errorf("%w: no free span of %d bytes (%d of %d in use)", ErrArena, need, a.inUse, len(a.mem))
}

// AllocWait is Alloc that waits for buffers to be freed while none is large enough, until ctx ends. A buffer
// larger than the whole arena fails at once.
func (a *Arena) AllocWait(ctx context.Context, n int) ([]byte, error) {
	if n > len(a.mem)-arenaAlign {
		return nil, fmt.Errorf("%w: a %d-byte buffer in a %d-byte arena", ErrArena, n, len(a.mem))
	}
	for {
		a.mu.Lock()
		wake := a.wake
		a.mu.Unlock()
		b, err := a.Alloc(n)
		if err == nil {
			return b, nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", err, ctx.Err())
		}
	}
}

// Free returns a buffer from Alloc; freeing anything else panics (it would corrupt the free list).
func (a *Arena) Free(b []byte) {
	if cap(b) == 0 {
		return
	}
	off := int(uintptr(unsafe.Pointer(unsafe.SliceData(b))) - a.base)
	a.mu.Lock()
	defer a.mu.Unlock()
	n, ok := a.used[off]
	if !ok {
		panic(fmt.Sprintf("splitzip/nixl: free of a buffer at arena offset %d that is not allocated", off))
	}
	delete(a.used, off)
	a.inUse -= n
	// Insert [off, off+n) and merge with its neighbours.
	i := 0
	for i < len(a.free) && a.free[i].off < off {
		i++
	}
	a.free = append(a.free, span{})
	copy(a.free[i+1:], a.free[i:])
	a.free[i] = span{off, n}
	if i+1 < len(a.free) && a.free[i].off+a.free[i].n == a.free[i+1].off {
		a.free[i].n += a.free[i+1].n
		a.free = append(a.free[:i+1], a.free[i+2:]...)
	}
	if i > 0 && a.free[i-1].off+a.free[i-1].n == a.free[i].off {
		a.free[i-1].n += a.free[i].n
		a.free = append(a.free[:i], a.free[i+1:]...)
	}
	close(a.wake)
	a.wake = make(chan struct{})
}

// MapHost maps n bytes of anonymous host memory (page-aligned, zeroed, backed on first touch) for an arena;
// unmap returns it.
func MapHost(n int) (mem []byte, unmap func() error, err error) {
	if n <= 0 {
		return nil, nil, fmt.Errorf("%w: map %d bytes", ErrOption, n)
	}
	mem, err = syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return nil, nil, fmt.Errorf("splitzip/nixl: mapping %d bytes: %w", n, err)
	}
	return mem, func() error { return syscall.Munmap(mem) }, nil
}
