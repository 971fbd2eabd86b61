package transport

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/splitzip/splitzip/internal/testpki"
)

// BenchmarkLoopback measures raw payload throughput over loopback: one
// transfer of 64 MiB in chunks of chunkSize per iteration, the sink only
// touching the data. The total is fixed so that every case has the same
// working set. The producer knows its chunks' CRCs, as the connector's does.
func BenchmarkLoopback(b *testing.B) {
	for _, chunkSize := range []int{256 << 10, 1 << 20, 8 << 20} {
		for _, conns := range []int{1, 2, 4, 8} {
			b.Run(fmt.Sprintf("chunk=%dKiB/conns=%d", chunkSize>>10, conns), func(b *testing.B) {
				benchTransfer(b, nil, (64<<20)/chunkSize, chunkSize, WithConns(conns))
			})
		}
	}
}

// BenchmarkTLS is BenchmarkLoopback's 8 MiB chunks over mutual TLS (TLS
// 1.3, ECDSA P-256 certificates, AES-GCM as Go negotiates it), against plain
// TCP in the same run: what TLS between engines costs.
func BenchmarkTLS(b *testing.B) {
	ca := testpki.NewCA(b, "bench")
	srv, cli := ca.Issue("prefill"), ca.Issue("decode")
	for _, conns := range []int{1, 4} {
		for _, tls := range []bool{false, true} {
			name := fmt.Sprintf("plain/conns=%d", conns)
			var sopts, copts []Option
			if tls {
				name = fmt.Sprintf("tls/conns=%d", conns)
				sopts = []Option{WithTLSFiles(ca.CAFile, srv.CertFile, srv.KeyFile)}
				copts = []Option{WithTLSFiles(ca.CAFile, cli.CertFile, cli.KeyFile)}
			}
			b.Run(name, func(b *testing.B) {
				benchTransfer(b, sopts, 8, 8<<20, append(copts, WithConns(conns))...)
			})
		}
	}
}

// BenchmarkSmallTransfers measures per-transfer overhead (dial, handshake
// with its proof, end of transfer) with one 4 KiB chunk.
func BenchmarkSmallTransfers(b *testing.B) {
	b.Run("plain", func(b *testing.B) { benchTransfer(b, nil, 1, 4<<10, WithConns(1)) })
	b.Run("tls", func(b *testing.B) {
		ca := testpki.NewCA(b, "bench")
		srv, cli := ca.Issue("prefill"), ca.Issue("decode")
		benchTransfer(b, []Option{WithTLSFiles(ca.CAFile, srv.CertFile, srv.KeyFile)}, 1, 4<<10,
			WithConns(1), WithTLSFiles(ca.CAFile, cli.CertFile, cli.KeyFile))
	})
}

func benchTransfer(b *testing.B, sopts []Option, n, chunkSize int, opts ...Option) {
	s := newServer(b, sopts...)
	chunks := makeChunks(n, chunkSize, chunkSize, 1)
	crcs := make([]uint32, n)
	for i, c := range chunks {
		crcs[i] = checksum(c)
	}
	var sum byte
	sink := func(i int, data []byte) error {
		sum += data[0] ^ data[len(data)-1]
		return nil
	}
	ids := make([]string, b.N)
	for i := range ids {
		ids[i] = NewHandoffID()
	}
	secret := NewSecret()
	b.SetBytes(int64(n * chunkSize))
	b.ReportAllocs()
	cpu0 := cpuTime()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p := NewStreamPayload(n, nil)
		for k, c := range chunks {
			p.PutWithCRC(k, c, crcs[k])
		}
		if err := s.Offer(ids[i], secret, p); err != nil {
			b.Fatal(err)
		}
		if _, err := Fetch(context.Background(), addrOf(s), ids[i], secret, sink, opts...); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	// CPU time of both ends per GB moved: steadier than throughput on a shared machine.
	b.ReportMetric((cpuTime()-cpu0).Seconds()*1e9/float64(int64(b.N)*int64(n*chunkSize)), "cpu-s/GB")
}

// cpuTime is the process's user and system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
