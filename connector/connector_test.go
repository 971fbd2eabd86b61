package connector

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/splitzip/splitzip/connector/transport"
	szn "github.com/splitzip/splitzip/nats"
	"github.com/stretchr/testify/require"
)

func newPair(t testing.TB, plane ControlPlane, popts, copts []Option) (*Producer, *Consumer) {
	t.Helper()
	p, err := NewProducer(plane, append([]Option{WithEngineID("prefill-0")}, popts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	c, err := NewConsumer(plane, append([]Option{WithEngineID("decode-0")}, copts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return p, c
}

func TestHandoffRoundTrip(t *testing.T) {
	plane := startPlane(t)
	for _, bypass := range []Bypass{BypassNever, BypassAlways} {
		t.Run(bypass.String(), func(t *testing.T) {
			// 3 blocks per frame: layers split into several frames, the last one short.
			p, c := newPair(t, plane, []Option{WithBypass(bypass), WithFrameBytes(3 * 2 * 6144)}, nil)
			src := newTestCache(t, smallLayout(40), true, 0)
			dst := newTestCache(t, smallLayout(64), false, 0)
			dst.layout.KVOffset = 64 * dst.layout.BlockStride
			require.NoError(t, p.RegisterHostCache(src.layout, src.bases))
			require.NoError(t, c.RegisterHostCache(dst.layout, dst.bases))

			srcBlocks := []int{5, 0, 39, 17, 3, 22, 9}
			dstBlocks := []int{60, 1, 2, 33, 12, 8, 41}
			h, err := p.Save("req-1", srcBlocks)
			require.NoError(t, err)
			require.NoError(t, c.Load("req-1", h, dstBlocks))
			require.NoError(t, waitLoad(t, c, "req-1"))
			requireSameBlocks(t, src, srcBlocks, dst, dstBlocks)
			require.Equal(t, []string{"req-1"}, waitFinishedSending(t, p, 1))

			st := waitHandoffs(t, p, 1)
			if bypass == BypassNever {
				ratio := float64(st.RawBytes) / float64(st.EncodedBytes)
				require.Greater(t, ratio, 1.3, "real KV compresses")
			} else {
				require.EqualValues(t, 1, st.RawHandoffs)
			}
			require.Eventually(t, func() bool { return p.InFlight() == 0 && p.StagingInUse() == 0 }, 10*time.Second, 5*time.Millisecond)
		})
	}
}

func TestLayerwiseSaveOverlapsFetch(t *testing.T) {
	plane := startPlane(t)
	p, c := newPair(t, plane, nil, nil)
	src := newTestCache(t, smallLayout(16), true, 1000)
	dst := newTestCache(t, smallLayout(16), false, 0)
	require.NoError(t, p.RegisterHostCache(src.layout, src.bases))
	require.NoError(t, c.RegisterHostCache(dst.layout, dst.bases))
	blocks := []int{1, 2, 3, 4}
	h, err := p.Begin("req", blocks)
	require.NoError(t, err)
	// The consumer starts while no layer is saved yet; layers then arrive one by one, as a forward pass would.
	require.NoError(t, c.Load("req", h, []int{15, 14, 13, 12}))
	for l := range src.layout.Layers {
		require.NoError(t, p.SaveLayer("req", l))
	}
	require.ErrorIs(t, p.SaveLayer("req", 0), ErrLayout, "out of order")
	require.NoError(t, p.WaitSaved(context.Background(), "req"))
	require.NoError(t, waitLoad(t, c, "req"))
	requireSameBlocks(t, src, blocks, dst, []int{15, 14, 13, 12})
}

func TestLoadFailures(t *testing.T) {
	plane := startPlane(t)
	p, c := newPair(t, plane, []Option{WithHandoffTTL(time.Second)}, []Option{WithRecordWait(500 * time.Millisecond)})
	src := newTestCache(t, smallLayout(8), true, 0)
	dst := newTestCache(t, smallLayout(8), false, 0)
	require.NoError(t, p.RegisterHostCache(src.layout, src.bases))
	require.NoError(t, c.RegisterHostCache(dst.layout, dst.bases))

	t.Run("unknown handoff", func(t *testing.T) {
		require.NoError(t, c.Load("u", Handoff{ID: szn.NewHandoffID(), Secret: NewHandoffSecret()}, []int{0}))
		err := waitLoad(t, c, "u")
		require.ErrorIs(t, err, szn.ErrUnknownHandoff)
	})
	t.Run("block count mismatch", func(t *testing.T) {
		h, err := p.Save("m", []int{0, 1})
		require.NoError(t, err)
		require.NoError(t, c.Load("m", h, []int{0}))
		require.ErrorIs(t, waitLoad(t, c, "m"), ErrMismatch)
	})
	t.Run("layout mismatch", func(t *testing.T) {
		other := newTestCache(t, smallLayout(8), false, 0)
		other.layout.Model = "another-model"
		c2, err := NewConsumer(plane, WithEngineID("decode-1"))
		require.NoError(t, err)
		defer c2.Close()
		require.NoError(t, c2.RegisterHostCache(other.layout, other.bases))
		h, err := p.Save("lm", []int{2})
		require.NoError(t, err)
		require.NoError(t, c2.Load("lm", h, []int{2}))
		err = waitLoad(t, c2, "lm")
		require.ErrorIs(t, err, ErrMismatch)
		require.ErrorContains(t, err, "layout")
	})
	t.Run("expired", func(t *testing.T) {
		h, err := p.Save("e", []int{3})
		require.NoError(t, err)
		require.NoError(t, p.WaitSaved(context.Background(), "e"))
		require.Eventually(t, func() bool { return p.InFlight() <= 2 && !hasSave(p, "e") }, 10*time.Second, 10*time.Millisecond, "the unclaimed handoff expires and is released")
		require.NoError(t, c.Load("e", h, []int{3}))
		require.Error(t, waitLoad(t, c, "e"))
	})
	t.Run("bad arguments", func(t *testing.T) {
		_, err := p.Save("b", []int{99})
		require.ErrorIs(t, err, ErrBlocks)
		require.ErrorIs(t, c.Load("b", Handoff{ID: szn.NewHandoffID(), Secret: NewHandoffSecret()}, []int{-1}), ErrBlocks)
		_, err = p.Save("dup", []int{1})
		require.NoError(t, err)
		_, err = p.Save("dup", []int{1})
		require.ErrorIs(t, err, ErrDuplicate)
	})
	// The producer keeps serving after all of that.
	h, err := p.Save("ok", []int{4, 5})
	require.NoError(t, err)
	require.NoError(t, c.Load("ok", h, []int{6, 7}))
	require.NoError(t, waitLoad(t, c, "ok"))
	requireSameBlocks(t, src, []int{4, 5}, dst, []int{6, 7})
}

func hasSave(p *Producer, req string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.saves[req] != nil
}

// flipProxy forwards TCP to target, flipping one bit of the producer's stream after skip bytes (none where skip
// is negative). sent counts the bytes of the producer's stream forwarded so far.
func flipProxy(t *testing.T, target string, skip int) (addr string, sent *atomic.Int64) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	var once sync.Once
	sent = new(atomic.Int64)
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			go func() { _, _ = io.Copy(out, in); out.Close() }()
			go func() {
				buf := make([]byte, 32<<10)
				seen := 0
				for {
					n, err := out.Read(buf)
					if n > 0 {
						if skip >= 0 && seen <= skip && skip < seen+n {
							once.Do(func() { buf[skip-seen] ^= 0x10 })
						}
						seen += n
						if _, werr := in.Write(buf[:n]); werr != nil {
							break
						}
						sent.Add(int64(n))
					}
					if err != nil {
						break
					}
				}
				in.Close()
			}()
		}
	}()
	return ln.Addr().String(), sent
}

// freeAddr returns a loopback address with a port free a moment ago, for a producer that must listen there.
func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

func TestFlippedBitFailsTheLoad(t *testing.T) {
	plane := startPlane(t)
	// A producer that advertises the proxy: consumers reach it through the bit-flipping hop.
	addr := freeAddr(t)
	proxy, _ := flipProxy(t, addr, 20000)
	p, err := NewProducer(plane, WithEngineID("prefill-y"), WithListenAddr(addr), WithAdvertiseAddr(proxy))
	require.NoError(t, err)
	defer p.Close()
	c, err := NewConsumer(plane, WithEngineID("decode-y"), WithTransport(transport.WithConns(1)))
	require.NoError(t, err)
	defer c.Close()
	src := newTestCache(t, smallLayout(8), true, 0)
	dst := newTestCache(t, smallLayout(8), false, 0)
	require.NoError(t, p.RegisterHostCache(src.layout, src.bases))
	require.NoError(t, c.RegisterHostCache(dst.layout, dst.bases))
	h, err := p.Save("f", []int{0, 1, 2, 3})
	require.NoError(t, err)
	require.NoError(t, c.Load("f", h, []int{4, 5, 6, 7}))
	err = waitLoad(t, c, "f")
	require.ErrorIs(t, err, transport.ErrChecksum)
}

func TestProducerKilledMidTransfer(t *testing.T) {
	plane := startPlane(t)
	// A slow link (rate-limited) so the transfer is still running when the producer goes away; consumers reach
	// the producer through a proxy that counts what it forwarded, so the test sees the transfer under way.
	addr := freeAddr(t)
	proxy, sent := flipProxy(t, addr, -1)
	p, c := newPair(t, plane, []Option{WithTransport(transport.WithRateLimit(2 << 20)), WithListenAddr(addr), WithAdvertiseAddr(proxy)}, nil)
	src := newTestCache(t, smallLayout(64), true, 0)
	dst := newTestCache(t, smallLayout(64), false, 0)
	require.NoError(t, p.RegisterHostCache(src.layout, src.bases))
	require.NoError(t, c.RegisterHostCache(dst.layout, dst.bases))
	blocks := make([]int, 64)
	for i := range blocks {
		blocks[i] = i
	}
	h, err := p.Save("k", blocks)
	require.NoError(t, err)
	require.NoError(t, c.Load("k", h, blocks))
	// About 16 MB cross at 2 MiB/s: once 1 MiB has, the producer goes away in the middle of the transfer.
	require.Eventually(t, func() bool { return sent.Load() >= 1<<20 }, 30*time.Second, 5*time.Millisecond, "the transfer is under way")
	require.Zero(t, c.Stats().Loads, "the load is still running")
	require.NoError(t, p.Close())
	err = waitLoad(t, c, "k")
	require.Error(t, err, "a load whose producer died must fail, not be marked done")
}

// Tensor parallelism: each rank's producer saves its own shard under the one handoff id the scheduler chose,
// and the consumer of the same rank loads it; a consumer of another TP size is refused.
func TestTensorParallelShards(t *testing.T) {
	plane := startPlane(t)
	const tp = 2
	id, secret := NewHandoffID(), NewHandoffSecret()
	var srcs, dsts []*testCache
	var cons []*Consumer
	for r := range tp {
		l := smallLayout(8)
		l.TPSize = tp
		p, err := NewProducer(plane, WithEngineID("prefill-tp"), WithRank(r))
		require.NoError(t, err)
		defer p.Close()
		c, err := NewConsumer(plane, WithEngineID("decode-tp"), WithRank(r))
		require.NoError(t, err)
		defer c.Close()
		src := newTestCache(t, l, true, 1000*r) // each rank holds different heads
		dst := newTestCache(t, l, false, 0)
		require.NoError(t, p.RegisterHostCache(l, src.bases))
		require.NoError(t, c.RegisterHostCache(l, dst.bases))
		_, err = p.BeginHandoff("req", id, secret, []int{1, 2})
		require.NoError(t, err)
		for layer := range l.Layers {
			require.NoError(t, p.SaveLayer("req", layer))
		}
		srcs, dsts, cons = append(srcs, src), append(dsts, dst), append(cons, c)
	}
	for r := range tp {
		require.NoError(t, cons[r].Load("req", Handoff{ID: id, Secret: secret}, []int{6, 7}))
	}
	for r := range tp {
		require.NoError(t, waitLoad(t, cons[r], "req"))
		requireSameBlocks(t, srcs[r], []int{1, 2}, dsts[r], []int{6, 7})
	}
	require.NotEqual(t, dsts[0].block(0, 0, 6), dsts[1].block(0, 0, 6), "each rank got its own shard")

	// A TP=1 consumer cannot load a TP=2 handoff.
	single := newTestCache(t, smallLayout(8), false, 0)
	c1, err := NewConsumer(plane, WithEngineID("decode-tp1"))
	require.NoError(t, err)
	defer c1.Close()
	require.NoError(t, c1.RegisterHostCache(single.layout, single.bases))
	p, err := NewProducer(plane, WithEngineID("prefill-tp-b"))
	require.NoError(t, err)
	defer p.Close()
	l2 := smallLayout(8)
	l2.TPSize = tp
	require.NoError(t, p.RegisterHostCache(l2, srcs[0].bases))
	h, err := p.Save("req2", []int{3})
	require.NoError(t, err)
	require.NoError(t, c1.Load("req2", h, []int{3}))
	require.ErrorIs(t, waitLoad(t, c1, "req2"), ErrMismatch)
}
