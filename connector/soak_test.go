package connector

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	szn "github.com/splitzip/splitzip/nats"
	"github.com/stretchr/testify/require"
)

// loadWaiter routes a consumer's Poll results to the goroutines waiting on each request, so that several
// loads can be awaited at once (Poll hands every result out once).
type loadWaiter struct {
	c    *Consumer
	mu   sync.Mutex
	wait map[string]chan error
	stop chan struct{}
	done chan struct{}
}

func newLoadWaiter(t testing.TB, c *Consumer) *loadWaiter {
	w := &loadWaiter{c: c, wait: map[string]chan error{}, stop: make(chan struct{}), done: make(chan struct{})}
	go w.poll()
	t.Cleanup(func() { close(w.stop); <-w.done })
	return w
}

// expect registers reqID before its Load, so that no result goes unclaimed.
func (w *loadWaiter) expect(reqID string) <-chan error {
	ch := make(chan error, 1)
	w.mu.Lock()
	w.wait[reqID] = ch
	w.mu.Unlock()
	return ch
}

func (w *loadWaiter) poll() {
	defer close(w.done)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		done, failed := w.c.Poll()
		w.mu.Lock()
		for _, d := range done {
			w.wait[d] <- nil
			delete(w.wait, d)
		}
		for _, f := range failed {
			w.wait[f.RequestID] <- f.Err
			delete(w.wait, f.RequestID)
		}
		w.mu.Unlock()
		select {
		case <-w.stop:
			return
		case <-tick.C:
		}
	}
}

// warnCounter counts the warnings logged through slog's default logger while a test runs.
type warnCounter struct {
	slog.Handler
	n    atomic.Int64
	mu   sync.Mutex
	last []string
}

func (w *warnCounter) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		w.n.Add(1)
		w.mu.Lock()
		if len(w.last) < 5 {
			w.last = append(w.last, r.Message)
		}
		w.mu.Unlock()
	}
	return w.Handler.Handle(ctx, r)
}

func (w *warnCounter) WithAttrs(as []slog.Attr) slog.Handler {
	return &warnLink{w.Handler.WithAttrs(as), w}
}
func (w *warnCounter) WithGroup(g string) slog.Handler { return &warnLink{w.Handler.WithGroup(g), w} }

// warnLink is a derived logger's handler that still counts into its root warnCounter.
type warnLink struct {
	slog.Handler
	root *warnCounter
}

func (l *warnLink) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		l.root.n.Add(1)
		l.root.mu.Lock()
		if len(l.root.last) < 5 {
			l.root.last = append(l.root.last, r.Message)
		}
		l.root.mu.Unlock()
	}
	return l.Handler.Handle(ctx, r)
}
func (l *warnLink) WithAttrs(as []slog.Attr) slog.Handler {
	return &warnLink{l.Handler.WithAttrs(as), l.root}
}
func (l *warnLink) WithGroup(g string) slog.Handler { return &warnLink{l.Handler.WithGroup(g), l.root} }

// countWarnings makes slog's default logger count warnings (and print them) until the test ends.
func countWarnings(t testing.TB) *warnCounter {
	prev := slog.Default()
	w := &warnCounter{Handler: slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})}
	slog.SetDefault(slog.New(w))
	t.Cleanup(func() { slog.SetDefault(prev) })
	return w
}

// rssBytes is the process's resident set size (VmRSS in /proc/self/status), 0 where there is none.
func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kib, _ := strconv.ParseInt(f[1], 10, 64)
			return kib << 10
		}
	}
	return 0
}

// memSample is what the soak watches for growth.
//
// The heap check reads the live bytes after a collection (HeapAlloc), not the spans that hold them (HeapInuse):
// which spans stay partly filled depends on how much the process allocated between collections, and with the
// other soak test's caches kept alive in the same binary that moved by more than 5 MiB between samples without
// any growth in live bytes. The RSS check still sees what the spans cost.
type memSample struct {
	goroutines int
	heap       int64 // live heap bytes after a collection
	spans      int64 // heap spans in use
	rss        int64 // resident set
	staging    int64
}

func sampleMem(p *Producer) memSample {
	runtime.GC()
	debug.FreeOSMemory() // returns freed spans, so RSS shows what is held, not what the runtime kept
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memSample{goroutines: runtime.NumGoroutine(), heap: int64(ms.HeapAlloc), spans: int64(ms.HeapInuse), rss: rssBytes(), staging: p.StagingInUse()}
}

func (m memSample) String() string {
	return fmt.Sprintf("goroutines %d, heap %.2f MiB (spans %.1f), RSS %.1f MiB, staging %d B", m.goroutines, float64(m.heap)/(1<<20), float64(m.spans)/(1<<20), float64(m.rss)/(1<<20), m.staging)
}

// Many handoffs, 16 in flight at a time, in one process (producer, consumer and the embedded NATS server):
// after a warm-up, goroutines, staging, heap and RSS stay where they were, every load arrives bit-exact, and
// nothing is logged at warning level (a completed record whose publish failed would be).
//
// The server keeps a deleted record's marker until the bucket's TTL (HandoffTTL + ExpiredGrace) ends, about
// 300 bytes of its heap per handoff: the plane here keeps records 3 s, and the warm-up lasts longer than that,
// so the markers' count is in its steady state when the baseline is taken.
func TestManyHandoffsStayBounded(t *testing.T) {
	n, warm := 10000, 1000
	if testing.Short() || raceEnabled {
		n, warm = 600, 200
	}
	const inFlight, per = 16, 4 // each worker moves its own 4 blocks, so workers never share a block
	warnings := countWarnings(t)
	const recordTTL, grace = 2 * time.Second, time.Second
	// Memory storage: the file store caches a message block (about 4 MiB of heap) that comes and goes on its own
	// timer, and samples taken with and without it read as growth.
	plane := startPlane(t, szn.WithMaxInFlight(1<<16), szn.WithHandoffTTL(recordTTL), szn.WithExpiredGrace(grace),
		szn.WithStorage(szn.MemoryStorage))
	l := smallLayout(inFlight * per)
	l.Layers = 4
	p, c := newPair(t, plane, []Option{WithStagingBytes(16 << 20), WithHandoffTTL(recordTTL)}, nil)
	src := newTestCache(t, l, true, 0)
	dst := newTestCache(t, l, false, 0)
	require.NoError(t, p.RegisterHostCache(l, src.bases))
	require.NoError(t, c.RegisterHostCache(l, dst.bases))
	waiter := newLoadWaiter(t, c)

	var seq atomic.Int64
	var failed atomic.Value
	run := func(count int64) {
		var left atomic.Int64
		left.Store(count)
		var wg sync.WaitGroup
		for w := range inFlight {
			blocks := make([]int, per)
			for i := range blocks {
				blocks[i] = w*per + i
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					if left.Add(-1) < 0 || failed.Load() != nil {
						return
					}
					req := fmt.Sprint("r", seq.Add(1))
					res := waiter.expect(req)
					h, err := p.Save(req, blocks)
					if err == nil {
						err = c.Load(req, h, blocks)
					}
					if err == nil {
						err = <-res
					}
					if err == nil {
						for li := range l.Layers {
							for kv := range 2 {
								for _, b := range blocks {
									if string(src.block(li, kv, b)) != string(dst.block(li, kv, b)) {
										err = fmt.Errorf("%s: layer %d kv %d block %d differs", req, li, kv, b)
									}
								}
							}
						}
						// Poison the blocks again, so the next handoff into them must write them.
						for li := range l.Layers {
							for kv := range 2 {
								for _, b := range blocks {
									clear(dst.block(li, kv, b))
								}
							}
						}
					}
					if err != nil {
						failed.CompareAndSwap(nil, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		if err, _ := failed.Load().(error); err != nil {
			t.Fatal(err)
		}
		require.Eventually(t, func() bool { return p.InFlight() == 0 && c.InFlight() == 0 && p.StagingInUse() == 0 },
			20*time.Second, 5*time.Millisecond)
		p.FinishedSending()
	}

	// Warm-up: pools, connections, buckets, and the server's markers of deleted records at their steady count.
	for t0 := time.Now(); ; {
		run(int64(warm))
		if time.Since(t0) > 2*(recordTTL+grace) {
			break
		}
	}
	before := sampleMem(p)
	t.Logf("after %d warm-up handoffs: %v", seq.Load(), before)
	const steps = 4
	var mid memSample
	for s := 1; s <= steps; s++ {
		run(int64(n / steps))
		mid = sampleMem(p)
		t.Logf("after %d more: %v", n*s/steps, mid)
	}
	require.Eventually(t, func() bool { return runtime.NumGoroutine() <= before.goroutines+5 }, 10*time.Second, 10*time.Millisecond,
		"goroutines: %d before, %d after", before.goroutines, runtime.NumGoroutine())
	require.Zero(t, mid.staging)
	// The race detector's shadow memory and bookkeeping grow with every goroutine and allocation and are not
	// given back: heap and RSS are checked without it (make soak).
	if !raceEnabled {
		require.Less(t, mid.heap-before.heap, int64(4<<20), "heap grew: %v → %v", before, mid)
		if before.rss > 0 {
			require.Less(t, mid.rss-before.rss, int64(16<<20), "RSS grew: %v → %v", before, mid)
		}
	}
	require.Zero(t, warnings.n.Load(), "warnings logged, e.g. %q", warnings.last)
	st := p.Stats()
	require.Zero(t, st.Failed)
	require.EqualValues(t, seq.Load(), c.Stats().Loads)
}
