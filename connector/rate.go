package connector

import (
	"slices"
	"sync"
	"time"
)

// ewma keeps an exponentially weighted average of a measurement (a throughput, a ratio, a model's accuracy).
type ewma struct {
	mu sync.Mutex
	v  float64
	n  int
}

const ewmaWeight = 0.25 // weight of a new observation

// add records one observation.
func (m *ewma) add(x float64) {
	m.mu.Lock()
	if m.n <= 1 {
		// The first observation is often a cold one (connections, staging memory faulted in, caches): the
		// second replaces it rather than being averaged with it.
		m.v = x
	} else {
		m.v += ewmaWeight * (x - m.v)
	}
	m.n++
	m.mu.Unlock()
}

// raise lifts the average to x when x is larger (a lower bound learned on the way), counting as an
// observation.
func (m *ewma) raise(x float64) {
	m.mu.Lock()
	if x > m.v {
		m.v = x
		m.n = max(m.n, 2) // a bound, not a cold first reading: the next observation averages with it
	}
	m.mu.Unlock()
}

// get returns the average and whether anything was observed.
func (m *ewma) get() (float64, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.v, m.n > 0
}

// or returns the average, or def when nothing was observed.
func (m *ewma) or(def float64) float64 {
	if v, ok := m.get(); ok {
		return v
	}
	return def
}

// observeRate records a throughput of bytes in d.
func (m *ewma) observeRate(bytes float64, d time.Duration) {
	if bytes <= 0 || d <= 0 {
		return
	}
	m.add(bytes / d.Seconds())
}

// window keeps the last effWindow observations of a measurement that single outliers must not sway (a
// handoff slowed by another process on the host), and answers their median.
type window struct {
	mu   sync.Mutex
	v    [effWindow]float64
	n    int // observations kept, at most effWindow
	next int // where the next one goes
	seen int // observations ever made
}

const effWindow = 5

// add records one observation. As with ewma, the first one (often cold) is replaced by the second.
func (w *window) add(x float64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.seen == 1 {
		w.n, w.next = 0, 0
	}
	w.seen++
	w.v[w.next] = x
	w.next = (w.next + 1) % effWindow
	w.n = min(w.n+1, effWindow)
}

// median returns the median of the kept observations (the mean of the middle two for an even count) and
// how many there are.
func (w *window) median() (float64, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.n == 0 {
		return 0, 0
	}
	s := w.v
	k := s[:w.n]
	slices.Sort(k)
	if w.n%2 == 1 {
		return k[w.n/2], w.n
	}
	return (k[w.n/2-1] + k[w.n/2]) / 2, w.n
}

// or returns the median, or def when nothing was observed.
func (w *window) or(def float64) float64 {
	if v, n := w.median(); n > 0 {
		return v
	}
	return def
}
