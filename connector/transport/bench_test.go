package transport

import (
	"context"
	"fmt"
	"testing"
)

// BenchmarkLoopback measures raw payload throughput over loopback: one
// transfer of 64 MiB in chunks of chunkSize per iteration, the sink only
// touching the data. The total is fixed so that every case has the same
// working set.
func BenchmarkLoopback(b *testing.B) {
	for _, chunkSize := range []int{64 << 10, 256 << 10, 1 << 20, 4 << 20} {
		for _, conns := range []int{1, 2, 4, 8} {
			b.Run(fmt.Sprintf("chunk=%dKiB/conns=%d", chunkSize>>10, conns), func(b *testing.B) {
				benchTransfer(b, (64<<20)/chunkSize, chunkSize, WithConns(conns))
			})
		}
	}
}

// BenchmarkSmallTransfers measures per-transfer overhead (dial, handshake,
// end of transfer) with one 4 KiB chunk.
func BenchmarkSmallTransfers(b *testing.B) {
	benchTransfer(b, 1, 4<<10, WithConns(1))
}

func benchTransfer(b *testing.B, n, chunkSize int, opts ...Option) {
	s := newServer(b)
	chunks := makeChunks(n, chunkSize, chunkSize, 1)
	var sum byte
	sink := func(i int, data []byte) error {
		sum += data[0] ^ data[len(data)-1]
		return nil
	}
	ids := make([]string, b.N)
	for i := range ids {
		ids[i] = NewHandoffID()
	}
	b.SetBytes(int64(n * chunkSize))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := s.Offer(ids[i], testSecret, NewBytesPayload(chunks, nil)); err != nil {
			b.Fatal(err)
		}
		if _, err := Fetch(context.Background(), addrOf(s), ids[i], testSecret, sink, opts...); err != nil {
			b.Fatal(err)
		}
	}
}
