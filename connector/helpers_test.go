package connector

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/internal/safetensors"
	szn "github.com/splitzip/splitzip/nats"
	"github.com/stretchr/testify/require"
)

// startPlane runs an embedded NATS server for the test.
func startPlane(t testing.TB, opts ...szn.Option) *szn.Plane {
	t.Helper()
	opts = append([]szn.Option{szn.WithEmbeddedServer("127.0.0.1", 0, t.TempDir())}, opts...)
	p, err := szn.Connect(opts...)
	require.NoError(t, err)
	t.Cleanup(p.Close)
	return p
}

// testCache is a KV cache in Go memory, laid out like vLLM's [2, num_blocks, block_size, heads, head] per layer.
type testCache struct {
	layout Layout
	mem    [][]byte
	bases  []uintptr
}

func smallLayout(numBlocks int) Layout {
	bb := int64(16 * 3 * 64 * 2) // SmolLM2-135M: 16-token blocks, 3 KV heads, head size 64, bf16
	return Layout{Model: "SmolLM2-135M", Layers: 30, BlockSize: 16, KVHeads: 3, HeadSize: 64, DType: codec.BF16,
		TPSize: 1, NumBlocks: numBlocks, BlockStride: bb, KVOffset: int64(numBlocks) * bb}
}

var fixtureKV []byte

// keepAlive holds every test cache's memory until the test binary exits: producers and consumers reach it only
// through bare addresses, and their goroutines may outlive the test function that made it (they stop in
// cleanups that run after it returns).
var keepAlive struct {
	sync.Mutex
	mem [][]byte
}

// realKV returns the evaluation fixture's bf16 bytes (real K and V from SmolLM2-135M).
func realKV(t testing.TB) []byte {
	if fixtureKV == nil {
		f, err := safetensors.ReadFile(filepath.Join("..", "tests", "data", "kv_evaluation.safetensors"))
		require.NoError(t, err)
		for _, x := range f.Tensors {
			fixtureKV = append(fixtureKV, x.Data...)
		}
	}
	return fixtureKV
}

// newTestCache allocates a cache; fill: real KV tiled with an offset (so caches differ), or poison 0xA5.
func newTestCache(t testing.TB, l Layout, fill bool, offset int) *testCache {
	c := &testCache{layout: l}
	src := realKV(t)
	for range l.Layers {
		m := make([]byte, l.KVOffset+int64(l.NumBlocks)*l.BlockStride)
		for i := range m {
			if fill {
				m[i] = src[(i+offset)%len(src)]
			} else {
				m[i] = 0xA5
			}
		}
		offset += len(m)
		keepAlive.Lock()
		keepAlive.mem = append(keepAlive.mem, m)
		keepAlive.Unlock()
		c.mem = append(c.mem, m)
		c.bases = append(c.bases, uintptr(unsafe.Pointer(&m[0])))
	}
	return c
}

func (c *testCache) block(l, kv, b int) []byte {
	off := int64(kv)*c.layout.KVOffset + int64(b)*c.layout.BlockStride
	return c.mem[l][off : off+c.layout.BlockBytes()]
}

// requireSameBlocks checks that dst's blocks equal src's, block for block, in every layer, K and V.
func requireSameBlocks(t testing.TB, src *testCache, srcBlocks []int, dst *testCache, dstBlocks []int) {
	t.Helper()
	for l := range src.layout.Layers {
		for kv := range 2 {
			for i := range srcBlocks {
				require.Equal(t, src.block(l, kv, srcBlocks[i]), dst.block(l, kv, dstBlocks[i]),
					"layer %d kv %d block %d → %d", l, kv, srcBlocks[i], dstBlocks[i])
			}
		}
	}
}

// waitLoad polls the consumer until reqID is done or failed.
func waitLoad(t testing.TB, c *Consumer, reqID string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		done, failed := c.Poll()
		for _, d := range done {
			if d == reqID {
				return nil
			}
		}
		for _, f := range failed {
			if f.RequestID == reqID {
				return f.Err
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("load of %s did not finish", reqID)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// waitHandoffs waits until p has counted n handoffs and returns its stats then. The producer counts a handoff
// once its completed record's publish has returned, and a consumer that read that record may have finished
// its load before: a load done does not mean its handoff is counted yet.
func waitHandoffs(t testing.TB, p *Producer, n int64) ProducerStats {
	t.Helper()
	var st ProducerStats
	require.Eventually(t, func() bool {
		st = p.Stats()
		return st.Handoffs >= n
	}, 10*time.Second, 5*time.Millisecond, "the producer counts %d handoffs", n)
	require.Equal(t, n, st.Handoffs, "handoffs counted")
	return st
}

// waitFinishedSending collects what p.FinishedSending reports until it has n requests, and returns them. Like
// the handoff count, a request is reported once its completed record's publish has returned, which may be
// after its load is done.
func waitFinishedSending(t testing.TB, p *Producer, n int) []string {
	t.Helper()
	var sent []string
	require.Eventually(t, func() bool {
		sent = append(sent, p.FinishedSending()...)
		return len(sent) >= n
	}, 10*time.Second, 5*time.Millisecond, "the producer reports %d requests sent", n)
	return sent
}
