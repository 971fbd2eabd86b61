package connector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/connector/nixl"
	"github.com/splitzip/splitzip/connector/transport"
	"github.com/splitzip/splitzip/kernels/cuda"
	szn "github.com/splitzip/splitzip/nats"
)

// needNIXL skips a test on a machine without NIXL's library (`make nixl` unpacks one into build/nixl), unless
// SPLITZIP_NIXL_LIB demands one; UCX runs over TCP and shared memory unless UCX_TLS says otherwise.
func needNIXL(t *testing.T) {
	t.Helper()
	demanded := os.Getenv("SPLITZIP_NIXL_LIB") != ""
	if !demanded {
		lib := filepath.Join("..", "build", "nixl", "wheel", ".nixl_cu13.mesonpy.libs", "libnixl_capi.so")
		if abs, err := filepath.Abs(lib); err == nil {
			if _, err := os.Stat(abs); err == nil {
				t.Setenv("SPLITZIP_NIXL_LIB", abs) // read once, by the first Load
			}
		}
	}
	if os.Getenv("UCX_TLS") == "" {
		t.Setenv("UCX_TLS", "tcp,sm,self")
	}
	if err := nixl.Load(); err != nil {
		if demanded || !errors.Is(err, nixl.ErrNoLibrary) {
			t.Fatalf("NIXL: %v", err)
		}
		t.Skipf("no NIXL library (make nixl fetches one into build/nixl): %v", err)
	}
}

func nixlOpts(extra ...Option) []Option {
	return append([]Option{WithPayloadTransport(TransportNIXL), WithStagingBytes(64 << 20), WithNIXL(nixl.WithRecvBytes(32 << 20))}, extra...)
}

func TestNIXLHandoffRoundTrip(t *testing.T) {
	needNIXL(t)
	plane := startPlane(t)
	for _, tc := range []struct {
		name   string
		bypass Bypass
		mode   Mode
	}{{"raw", BypassAlways, ModeAuto}, {"fast", BypassNever, ModeFast}, {"high-ratio", BypassNever, ModeHighRatio}} {
		t.Run(tc.name, func(t *testing.T) {
			p, c := newPair(t, plane, nixlOpts(WithBypass(tc.bypass), WithMode(tc.mode), WithFrameBytes(3*2*6144)), nixlOpts())
			require.Contains(t, p.Addr(), "nixl:prefill-0-r0-p-")
			src := newTestCache(t, smallLayout(40), true, 0)
			dst := newTestCache(t, smallLayout(64), false, 0)
			require.NoError(t, p.RegisterHostCache(src.layout, src.bases))
			require.NoError(t, c.RegisterHostCache(dst.layout, dst.bases))
			srcBlocks := []int{5, 0, 39, 17, 3, 22, 9}
			dstBlocks := []int{60, 1, 2, 33, 12, 8, 41}
			for k := range 3 { // more than one: staging and the consumer's receive memory are reused
				req := "req-" + string(rune('a'+k))
				h, err := p.Save(req, srcBlocks)
				require.NoError(t, err)
				rec, err := plane.WaitShard(context.Background(), h.ID, 0, false)
				require.NoError(t, err)
				require.Equal(t, szn.PayloadNIXL, rec.Transport)
				require.NoError(t, c.Load(req, h, dstBlocks))
				require.NoError(t, waitLoad(t, c, req))
				requireSameBlocks(t, src, srcBlocks, dst, dstBlocks)
				for _, b := range dstBlocks { // poison again, so the next load must write every byte
					for l := range dst.layout.Layers {
						for kv := range 2 {
							clear(dst.block(l, kv, b))
						}
					}
				}
			}
			st := waitHandoffs(t, p, 3)
			if tc.bypass == BypassNever {
				require.Greater(t, float64(st.RawBytes)/float64(st.EncodedBytes), 1.3, "real KV compresses")
			}
			require.Eventually(t, func() bool { return p.InFlight() == 0 && p.StagingInUse() == 0 }, 10*time.Second, 5*time.Millisecond,
				"the consumer's notice releases every handoff")
			require.Positive(t, p.Estimates().Link, "transfers measured the link")
		})
	}
}

// A bit flipped in the producer's staging after the frame's CRC was taken fails the load, naming the chunk.
func TestNIXLFlippedBitFailsTheLoad(t *testing.T) {
	needNIXL(t)
	plane := startPlane(t)
	p, c := newPair(t, plane, nixlOpts(WithBypass(BypassNever)), nixlOpts())
	src := newTestCache(t, smallLayout(8), true, 0)
	dst := newTestCache(t, smallLayout(8), false, 0)
	require.NoError(t, p.RegisterHostCache(src.layout, src.bases))
	require.NoError(t, c.RegisterHostCache(dst.layout, dst.bases))
	h, err := p.Save("f", []int{0, 1, 2, 3})
	require.NoError(t, err)
	require.NoError(t, p.WaitSaved(context.Background(), "f"))
	p.mu.Lock()
	frame := p.byID[h.ID].frames[7]
	frame[len(frame)/2] ^= 0x04
	p.mu.Unlock()
	require.NoError(t, c.Load("f", h, []int{4, 5, 6, 7}))
	err = waitLoad(t, c, "f")
	require.ErrorIs(t, err, transport.ErrChecksum)
	require.ErrorContains(t, err, "chunk 7")
}

// A producer that goes away in the middle of a handoff (layers still to come) fails the load.
func TestNIXLProducerClosedMidHandoff(t *testing.T) {
	needNIXL(t)
	plane := startPlane(t)
	p, c := newPair(t, plane, nixlOpts(), nixlOpts(WithNIXL(nixl.WithIOTimeout(5*time.Second))))
	src := newTestCache(t, smallLayout(8), true, 0)
	dst := newTestCache(t, smallLayout(8), false, 0)
	require.NoError(t, p.RegisterHostCache(src.layout, src.bases))
	require.NoError(t, c.RegisterHostCache(dst.layout, dst.bases))
	h, err := p.Begin("k", []int{0, 1, 2})
	require.NoError(t, err)
	for l := range 10 { // 10 of 30 layers
		require.NoError(t, p.SaveLayer("k", l))
	}
	require.NoError(t, c.Load("k", h, []int{3, 4, 5}))
	require.Eventually(t, func() bool { return c.InFlight() == 1 }, 5*time.Second, time.Millisecond)
	time.Sleep(50 * time.Millisecond) // the first layers cross (not a synchronisation)
	require.NoError(t, p.Close())
	err = waitLoad(t, c, "k")
	require.Error(t, err, "a load whose producer went away must fail, not be marked done")
}

// A consumer set up for TCP refuses a NIXL handoff with a message that says what to configure; one set up
// for NIXL still reads TCP handoffs.
func TestNIXLAndTCPConsumers(t *testing.T) {
	needNIXL(t)
	plane := startPlane(t)
	src := newTestCache(t, smallLayout(8), true, 0)
	dst := newTestCache(t, smallLayout(8), false, 0)

	pn, ct := newPair(t, plane, nixlOpts(), nil)
	require.NoError(t, pn.RegisterHostCache(src.layout, src.bases))
	require.NoError(t, ct.RegisterHostCache(dst.layout, dst.bases))
	h, err := pn.Save("n", []int{0, 1})
	require.NoError(t, err)
	require.NoError(t, ct.Load("n", h, []int{2, 3}))
	err = waitLoad(t, ct, "n")
	require.ErrorIs(t, err, ErrMismatch)
	require.ErrorContains(t, err, "payload transport nixl")

	pt, err := NewProducer(plane, WithEngineID("prefill-tcp"))
	require.NoError(t, err)
	defer pt.Close()
	cn, err := NewConsumer(plane, nixlOpts(WithEngineID("decode-nixl"))...)
	require.NoError(t, err)
	defer cn.Close()
	dst2 := newTestCache(t, smallLayout(8), false, 0)
	require.NoError(t, pt.RegisterHostCache(src.layout, src.bases))
	require.NoError(t, cn.RegisterHostCache(dst2.layout, dst2.bases))
	h, err = pt.Save("t", []int{0, 1})
	require.NoError(t, err)
	require.NoError(t, cn.Load("t", h, []int{2, 3}))
	require.NoError(t, waitLoad(t, cn, "t"))
	requireSameBlocks(t, src, []int{0, 1}, dst2, []int{2, 3})
}

func TestPayloadTransportOption(t *testing.T) {
	o, err := buildOptions([]Option{WithEngineID("e")})
	require.NoError(t, err)
	require.Equal(t, TransportTCP, o.PayloadTransport)
	o, err = buildOptions([]Option{WithEngineID("e"), WithPayloadTransport("nixl")})
	require.NoError(t, err)
	require.Equal(t, TransportNIXL, o.PayloadTransport)
	_, err = buildOptions([]Option{WithEngineID("e"), WithPayloadTransport("rdma")})
	require.ErrorIs(t, err, ErrOption)
	require.ErrorContains(t, err, `"rdma"`)
}

// A NIXL record's locator (the producer agent's memory keys, the chunk table's place) is sealed under the
// handoff's secret: the record shows neither, another secret does not open it, and a consumer with the wrong
// secret fails with ErrAccess before any read; the right one loads.
func TestNIXLLocatorIsSealed(t *testing.T) {
	needNIXL(t)
	plane := startPlane(t)
	p, c := newPair(t, plane, nixlOpts(WithEngineID("prefill-seal")), nixlOpts(WithEngineID("decode-seal")))
	src := newTestCache(t, smallLayout(8), true, 0)
	dst := newTestCache(t, smallLayout(8), false, 0)
	require.NoError(t, p.RegisterHostCache(src.layout, src.bases))
	require.NoError(t, c.RegisterHostCache(dst.layout, dst.bases))
	h, err := p.Save("s", []int{0, 1, 2})
	require.NoError(t, err)
	rec, err := plane.WaitShard(context.Background(), h.ID, 0, false)
	require.NoError(t, err)
	secret, err := parseSecret(h.Secret)
	require.NoError(t, err)
	loc, err := openLocator(rec.Locator, secret, h.ID)
	require.NoError(t, err)
	require.NotContains(t, string(rec.Locator), string(loc[:min(len(loc), 24)]), "the record shows the locator only sealed")
	other, _ := parseSecret(NewHandoffSecret())
	_, err = openLocator(rec.Locator, other, h.ID)
	require.ErrorIs(t, err, ErrAccess)
	_, err = openLocator(rec.Locator, secret, NewHandoffID())
	require.ErrorIs(t, err, ErrAccess, "sealed to its handoff id")

	require.NoError(t, c.Load("wrong", Handoff{ID: h.ID, Secret: NewHandoffSecret()}, []int{3, 4, 5}))
	require.ErrorIs(t, waitLoad(t, c, "wrong"), ErrAccess)
	require.NoError(t, c.Load("s", h, []int{3, 4, 5}))
	require.NoError(t, waitLoad(t, c, "s"))
	requireSameBlocks(t, src, []int{0, 1, 2}, dst, []int{3, 4, 5})
}

// A consumer turns UCX's CUDA IPC reads on where the environment leaves them to UCX, and keeps what it says.
func TestCUDAIPCReadsDefault(t *testing.T) {
	t.Setenv(ucxCUDAIPCReads, "n")
	enableCUDAIPCReads(slog.Default())
	require.Equal(t, "n", cuda.Getenv(ucxCUDAIPCReads))
	require.NoError(t, os.Unsetenv(ucxCUDAIPCReads))
	enableCUDAIPCReads(slog.Default())
	require.Equal(t, "y", cuda.Getenv(ucxCUDAIPCReads))
}

func TestNIXLDeviceOptions(t *testing.T) {
	_, err := buildOptions([]Option{WithEngineID("e"), WithNIXLDeviceReceive(64 << 20)})
	require.ErrorIs(t, err, ErrOption, "GPU receive memory is NIXL's")
	require.ErrorContains(t, err, "payload transport nixl")
	_, err = buildOptions([]Option{WithEngineID("e"), WithPayloadTransport("nixl"), WithNIXLDeviceReceive(-1)})
	require.ErrorIs(t, err, ErrOption)
	o, err := buildOptions([]Option{WithEngineID("e"), WithPayloadTransport("nixl"), WithNIXLDeviceReceive(64 << 20)})
	require.NoError(t, err)
	require.EqualValues(t, 64<<20, o.NIXLDeviceReceive)

	needNIXL(t)
	c, err := NewConsumer(startPlane(t), nixlOpts(WithEngineID("decode-dr"), WithNIXLDeviceReceive(64<<20))...)
	require.NoError(t, err)
	defer c.Close()
	dst := newTestCache(t, smallLayout(8), false, 0)
	err = c.RegisterHostCache(dst.layout, dst.bases)
	require.ErrorIs(t, err, ErrLayout, "a host cache has no GPU to receive into")
	require.ErrorContains(t, err, "GPU memory")

	_, err = buildOptions([]Option{WithEngineID("e"), WithNIXLDeviceStaging(true)})
	require.ErrorIs(t, err, ErrOption, "GPU staging is NIXL's")
	p, err := NewProducer(startPlane(t), nixlOpts(WithEngineID("prefill-ds"), WithNIXLDeviceStaging(true))...)
	require.NoError(t, err)
	defer p.Close()
	src := newTestCache(t, smallLayout(8), true, 0)
	err = p.RegisterHostCache(src.layout, src.bases)
	require.ErrorIs(t, err, ErrLayout, "a host cache has no GPU to stage in")
	require.ErrorContains(t, err, "GPU memory")
}

// Frames kept in GPU memory over NIXL: consumers reading chunks into GPU memory (WithNIXLDeviceReceive) and
// producers staging frames there (WithNIXLDeviceStaging), each alone and both together (GPU to GPU), for raw,
// fast and high-ratio chunks, fp8 high-ratio chunks, and fp8 fast chunks from a host producer (which only the
// CPU decodes: they come back to the host), all bit-exact; and a bit flipped in the producer's staging is
// caught by the CRC (the GPU's, where the consumer receives into GPU memory).
func TestDeviceNIXL(t *testing.T) {
	ctx := needGPU(t)
	if os.Getenv("UCX_TLS") == "" {
		t.Setenv("UCX_TLS", "tcp,sm,self,cuda_copy,cuda_ipc") // GPU memory needs UCX's CUDA transports
	}
	needNIXL(t)
	plane := startPlane(t)
	srcBlocks := []int{5, 0, 39, 17, 3, 22, 9}
	dstBlocks := []int{30, 1, 2, 33, 12, 8, 11}
	type where struct{ stage, recv bool }
	for _, tc := range []struct {
		name    string
		opts    []Option
		dt      codec.DType
		hostSrc bool
		gpu     []where
	}{
		{"raw", []Option{WithBypass(BypassAlways)}, codec.BF16, false, []where{{false, true}, {true, false}, {true, true}}},
		{"fast", []Option{WithMode(ModeFast), WithBypass(BypassNever)}, codec.BF16, false, []where{{false, true}, {true, false}, {true, true}}},
		{"high-ratio", []Option{WithMode(ModeHighRatio), WithBypass(BypassNever)}, codec.BF16, false, []where{{false, true}, {true, false}, {true, true}}},
		{"fp8 high-ratio", []Option{WithMode(ModeHighRatio), WithBypass(BypassNever)}, codec.FP8E4M3, false, []where{{false, true}, {true, true}}},
		{"fp8 fast from a host cache", []Option{WithMode(ModeFast), WithBypass(BypassNever)}, codec.FP8E4M3, true, []where{{false, true}}},
	} {
		for _, w := range tc.gpu {
			name := fmt.Sprintf("%s/staging on GPU %t/receive into GPU %t", tc.name, w.stage, w.recv)
			t.Run(name, func(t *testing.T) {
				id := strings.ReplaceAll(fmt.Sprintf("%s-%t-%t", tc.name, w.stage, w.recv), " ", "-")
				popts := append(slices.Clone(tc.opts), WithEngineID("p-dev-"+id), WithFrameBytes(3*2*6144), WithNIXLDeviceStaging(w.stage))
				copts := []Option{WithEngineID("d-dev-" + id)}
				if w.recv {
					copts = append(copts, WithNIXLDeviceReceive(32<<20))
				}
				p, c := newPair(t, plane, nixlOpts(popts...), nixlOpts(copts...))
				var srcHost, dstHost *testCache
				if tc.dt == codec.BF16 {
					srcHost, dstHost = newTestCache(t, smallLayout(40), true, 124), newTestCache(t, smallLayout(40), false, 0)
				} else {
					l := fp8Layout(40, tc.dt)
					srcHost, dstHost = newFP8TestCache(t, l, 124), newTestCache(t, l, false, 0)
				}
				if tc.hostSrc {
					require.NoError(t, p.RegisterHostCache(srcHost.layout, srcHost.bases))
				} else {
					src := newGPUCache(t, ctx, srcHost)
					require.NoError(t, p.RegisterDeviceCache(src.layout, 0, src.bases))
				}
				require.Equal(t, w.stage, p.devStaging != nil)
				dst := newGPUCache(t, ctx, dstHost)
				require.NoError(t, c.RegisterDeviceCache(dst.layout, 0, dst.bases))
				require.Equal(t, w.recv, c.nixl.HasDeviceMemory())
				for i := range 3 {
					saveAndCheck(t, ctx, p, c, fmt.Sprintf("req-%d", i), srcHost, srcBlocks, dst, dstHost, dstBlocks)
				}
				if tc.name != "raw" && !tc.hostSrc {
					st := waitHandoffs(t, p, 3)
					require.Greater(t, float64(st.RawBytes)/float64(st.EncodedBytes), 1.05, "compressed frames")
				}
				require.Eventually(t, func() bool { return p.InFlight() == 0 && p.StagingInUse() == 0 }, 10*time.Second, 5*time.Millisecond,
					"every handoff released, its staging with it")
				if w.stage {
					require.Zero(t, p.srv.(*nixlServer).srv.DeviceInUse(), "the GPU staging freed")
				}

				h, err := p.Save("flip", srcBlocks)
				require.NoError(t, err)
				require.NoError(t, p.WaitSaved(context.Background(), "flip"))
				flipStagedByte(t, ctx, p, h.ID, 5)
				require.NoError(t, c.Load("flip", h, dstBlocks))
				err = waitLoad(t, c, "flip")
				require.ErrorIs(t, err, transport.ErrChecksum)
				require.ErrorContains(t, err, "chunk 5")
			})
		}
	}
}

// flipStagedByte flips a bit in the middle of frame i of handoff id in the producer's staging, host or GPU.
func flipStagedByte(t *testing.T, ctx *cuda.Context, p *Producer, id string, i int) {
	p.mu.Lock()
	s := p.byID[id]
	p.mu.Unlock()
	if s.dev == nil {
		p.mu.Lock()
		s.frames[i][len(s.frames[i])/2] ^= 0x04
		p.mu.Unlock()
		return
	}
	s.dev.mu.Lock()
	f := s.dev.at[i]
	s.dev.mu.Unlock()
	at := f.p.Add(f.n / 2)
	require.NoError(t, ctx.Do(func() error {
		st, err := ctx.NewStream(cuda.StreamNonBlocking)
		if err != nil {
			return err
		}
		defer st.Close()
		b := make([]byte, 1)
		if err := st.CopyDtoH(b, at); err != nil {
			return err
		}
		if err := st.MemsetD8Async(at, b[0]^0x04, 1); err != nil {
			return err
		}
		return st.Synchronize()
	}))
}
