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

// Arena hands out buffers from one registered region: first fit over a free list kept sorted and coalesced.
// Memory is registered with NIXL once, as a whole, so that the metadata a peer loaded stays valid for every
// buffer (a registration made later would be unknown to the peer until it reloaded the metadata). A host
// arena (NewArena) hands out byte slices; an arena over memory Go cannot address, such as a GPU's
// (NewRegionArena), hands out addresses (AllocAddr). It is safe for concurrent use.
type Arena struct {
	mem    []byte // the host memory; nil for a region arena
	region Region

	mu    sync.Mutex
	free  []span      // sorted by offset, never adjacent
	used  map[int]int // offset → length of the buffers handed out
	inUse int
	wake  chan struct{} // closed and replaced whenever a buffer is freed
}

type span struct{ off, n int }

// NewArena returns an arena over host memory mem (its first and last partial aligned units are not used).
func NewArena(mem []byte) *Arena {
	r := Region{Len: len(mem), Mem: MemDRAM}
	if len(mem) > 0 {
		r.Addr = uintptr(unsafe.Pointer(&mem[0]))
	}
	a := NewRegionArena(r)
	a.mem = mem
	return a
}

// NewRegionArena returns an arena over r, memory the caller allocated and keeps alive (GPU memory, say): it
// hands out addresses in r (AllocAddr), which this process may not be able to dereference.
func NewRegionArena(r Region) *Arena {
	a := &Arena{region: r, used: map[int]int{}, wake: make(chan struct{})}
	start := int((arenaAlign - r.Addr%arenaAlign) % arenaAlign)
	if n := (r.Len - start) &^ (arenaAlign - 1); r.Len > start && n > 0 {
		a.free = []span{{start, n}}
	}
	return a
}

// Region is the arena's memory, for registration.
func (a *Arena) Region() Region { return a.region }

// Size is the arena's length in bytes.
func (a *Arena) Size() int { return a.region.Len }

// InUse is the bytes handed out and not yet freed.
func (a *Arena) InUse() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inUse
}

// Contains reports whether b lies inside a host arena.
func (a *Arena) Contains(b []byte) bool {
	if len(b) == 0 || a.mem == nil {
		return false
	}
	p := uintptr(unsafe.Pointer(&b[0]))
	return p >= a.region.Addr && p+uintptr(len(b)) <= a.region.Addr+uintptr(a.region.Len)
}

// Alloc returns a buffer of length n (capacity rounded up to the alignment) from a host arena, or an error
// wrapping ErrArena when no free span is large enough.
func (a *Arena) Alloc(n int) ([]byte, error) {
	if a.mem == nil {
		return nil, fmt.Errorf("%w: byte slices of %s memory", ErrArena, a.region.Mem)
	}
	off, need, err := a.alloc(n)
	if err != nil {
		return nil, err
	}
	return a.mem[off : off+n : off+need], nil
}

// bytesAt is the n bytes at p of a host arena's memory (a buffer from AllocAddr).
func (a *Arena) bytesAt(p uintptr, n int) []byte {
	off := int(p - a.region.Addr)
	return a.mem[off : off+n]
}

// AllocAddr returns the address of a buffer of n bytes (arenaAlign-aligned), or an error wrapping ErrArena
// when no free span is large enough.
func (a *Arena) AllocAddr(n int) (uintptr, error) {
	off, _, err := a.alloc(n)
	if err != nil {
		return 0, err
	}
	return a.region.Addr + uintptr(off), nil
}

func (a *Arena) alloc(n int) (off, need int, err error) {
	if n <= 0 {
		return 0, 0, fmt.Errorf("%w: a %d-byte buffer", ErrOption, n)
	}
	need = (n + arenaAlign - 1) &^ (arenaAlign - 1)
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
		return s.off, need, nil
	}
	return 0, 0, fmt.Errorf("%w: no free span of %d bytes (%d of %d in use)", ErrArena, need, a.inUse, a.region.Len)
}

// AllocWait is Alloc that waits for buffers to be freed while none is large enough, until ctx ends. A buffer
// larger than the whole arena fails at once.
func (a *Arena) AllocWait(ctx context.Context, n int) ([]byte, error) {
	var b []byte
	err := a.wait(ctx, n, func() (err error) { b, err = a.Alloc(n); return err })
	return b, err
}

// AllocAddrWait is AllocAddr that waits as AllocWait does.
func (a *Arena) AllocAddrWait(ctx context.Context, n int) (uintptr, error) {
	var p uintptr
	err := a.wait(ctx, n, func() (err error) { p, err = a.AllocAddr(n); return err })
	return p, err
}

func (a *Arena) wait(ctx context.Context, n int, alloc func() error) error {
	if n > a.region.Len-arenaAlign {
		return fmt.Errorf("%w: a %d-byte buffer in a %d-byte arena", ErrArena, n, a.region.Len)
	}
	for {
		a.mu.Lock()
		wake := a.wake
		a.mu.Unlock()
		err := alloc()
		if err == nil {
			return nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", err, ctx.Err())
		}
	}
}

// Free returns a buffer from Alloc; freeing anything else panics (it would corrupt the free list).
func (a *Arena) Free(b []byte) {
	if cap(b) == 0 {
		return
	}
	a.FreeAddr(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
}

// FreeAddr returns a buffer from AllocAddr (or Alloc, by its first byte's address); freeing anything else
// panics.
func (a *Arena) FreeAddr(p uintptr) {
	off := int(p - a.region.Addr)
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
