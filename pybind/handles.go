package pybind

import (
	"fmt"
	"sync"
	"sync/atomic"
)

// lastHandle numbers the handles of every table: a handle is never reused, nor shared by two tables, so a stale
// handle, or one of another kind (a codebook's where a code table's is expected), fails (errHandle) instead of
// reaching another object.
var lastHandle atomic.Int64

// handles is a table of Go objects that Python holds by integer handle.
type handles[T any] struct {
	mu   sync.RWMutex
	m    map[int]T
	what string
}

func newHandles[T any](what string) *handles[T] {
	return &handles[T]{m: map[int]T{}, what: what}
}

func (h *handles[T]) put(v T) int {
	id := int(lastHandle.Add(1))
	h.mu.Lock()
	defer h.mu.Unlock()
	h.m[id] = v
	return id
}

func (h *handles[T]) get(id int) (T, error) {
	h.mu.RLock()
	v, ok := h.m[id]
	h.mu.RUnlock()
	if !ok {
		return v, fmt.Errorf("%w: %s %d", errHandle, h.what, id)
	}
	return v, nil
}

func (h *handles[T]) release(id int) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.m[id]; !ok {
		return fmt.Errorf("%w: %s %d", errHandle, h.what, id)
	}
	delete(h.m, id)
	return nil
}

func (h *handles[T]) len() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.m)
}
