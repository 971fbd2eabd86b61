package nixl

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/splitzip/splitzip/connector/transport"
)

// BenchmarkFetch moves a 48 MiB payload of 8 MiB chunks staged in the arena, in one process (UCX_TLS picks
// the wire: shared memory, TCP loopback). Reports the CPU time of the whole process per GB.
func BenchmarkFetch(b *testing.B) {
	p := newPair(b, nil)
	const chunk, n = 8 << 20, 6
	chunks := make([][]byte, n)
	for i := range chunks {
		c, err := p.srv.Alloc(chunk)
		require.NoError(b, err)
		for j := range c {
			c[j] = byte(i + j)
		}
		chunks[i] = c
	}
	b.SetBytes(chunk * n)
	b.ResetTimer()
	var ru0, ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	t0 := time.Now()
	for range b.N {
		id := transport.NewHandoffID()
		require.NoError(b, p.srv.Offer(id, transport.NewBytesPayload(chunks, nil)))
		loc, err := p.srv.Locator(id)
		require.NoError(b, err)
		_, err = p.cli.Fetch(context.Background(), loc, id, func(int, []byte, uint32) error { return nil })
		require.NoError(b, err)
	}
	el := time.Since(t0)
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := time.Duration(ru1.Utime.Nano()-ru0.Utime.Nano()) + time.Duration(ru1.Stime.Nano()-ru0.Stime.Nano())
	gb := float64(b.N) * chunk * n / 1e9
	b.ReportMetric(cpu.Seconds()/gb, "cpu-s/GB")
	b.ReportMetric(el.Seconds()/gb, "s/GB")
}
