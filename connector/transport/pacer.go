package transport

import (
	"context"
	"sync"
	"time"
)

// pacer is a token bucket in virtual-time form (GCRA), shared by all
// connections of one Server or one Fetch. Unlike golang.org/x/time/rate it
// accepts any n, so a caller can pace whole slices.
type pacer struct {
	mu    sync.Mutex
	rate  float64       // bytes per second
	burst time.Duration // credit that may accumulate while idle
	tat   time.Time     // when everything admitted so far has drained
}

func newPacer(bytesPerSecond int64) *pacer {
	if bytesPerSecond <= 0 {
		return nil
	}
	return &pacer{rate: float64(bytesPerSecond), burst: 2 * time.Millisecond}
}

// slice returns the write/read granularity: each slice gets its own I/O
// deadline and is checksummed while in cache. 256 KiB unpaced, else about
// 1 ms of traffic, 4 KiB to 256 KiB.
func (p *pacer) slice() int {
	if p == nil {
		return 256 << 10
	}
	return min(256<<10, max(int(p.rate/1000), 4<<10))
}

// wait blocks until n more bytes may go, or ctx is done. A nil pacer never
// waits.
func (p *pacer) wait(ctx context.Context, n int) error {
	if p == nil || n <= 0 {
		return nil
	}
	now := time.Now()
	p.mu.Lock()
	start := p.tat
	if floor := now.Add(-p.burst); start.Before(floor) {
		start = floor
	}
	p.tat = start.Add(time.Duration(float64(n) / p.rate * float64(time.Second)))
	p.mu.Unlock()
	d := start.Sub(now)
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
