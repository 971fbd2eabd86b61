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

// fileForm is what codebooks and code tables share: a JSON file form, and Save to write it.
type fileForm interface {
	MarshalJSON() ([]byte, error)
	Save(path string) error
}

// jsonOf returns the file form of the object behind handle id.
func jsonOf[T fileForm](h *handles[T], id int) (string, error) {
	v, err := h.get(id)
	if err != nil {
		return "", wrap(err)
	}
	b, err := v.MarshalJSON()
	return string(b), wrap(err)
}

// saveOf writes the object behind handle id to path; it returns the handle.
func saveOf[T fileForm](h *handles[T], id int, path string) (int, error) {
	v, err := h.get(id)
	if err != nil {
		return 0, wrap(err)
	}
	return id, wrap(v.Save(path))
}

// releaseOf forgets handle id; it returns the number of objects h still holds.
func releaseOf[T any](h *handles[T], id int) (int, error) {
	if err := h.release(id); err != nil {
		return 0, wrap(err)
	}
	return h.len(), nil
}
