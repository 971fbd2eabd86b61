package nixl

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/splitzip/splitzip/connector/transport"
)

// pair is a server with a registered arena and a client, closed with the test.
type pair struct {
	srv *Server
	cli *Client
	mu  sync.Mutex
	st  []transport.Stats
}

func newPair(t testing.TB, sopts []Option, copts ...Option) *pair {
	t.Helper()
	needLibrary(t)
	p := &pair{}
	agentSeq++
	srv, err := NewServer(fmt.Sprintf("test-prod-%d-%d", os.Getpid(), agentSeq), append([]Option{WithOnTransfer(func(s transport.Stats) {
		p.mu.Lock()
		p.st = append(p.st, s)
		p.mu.Unlock()
	})}, sopts...)...)
	require.NoError(t, err)
	mem, unmap, err := MapHost(64 << 20)
	require.NoError(t, err)
	require.NoError(t, srv.UseArena(mem))
	t.Cleanup(func() { require.NoError(t, srv.Close()); require.NoError(t, unmap()) })
	cli, err := NewClient(fmt.Sprintf("test-cons-%d-%d", os.Getpid(), agentSeq), append([]Option{WithRecvBytes(32 << 20)}, copts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, cli.Close()) })
	p.srv, p.cli = srv, cli
	return p
}

func randomChunks(seed uint64, sizes ...int) [][]byte {
	r := rand.New(rand.NewPCG(seed, 7))
	out := make([][]byte, len(sizes))
	for i, n := range sizes {
		out[i] = make([]byte, n)
		for j := range out[i] {
			out[i][j] = byte(r.Uint32())
		}
	}
	return out
}

// collect is a sink that keeps a copy of every chunk and checks the CRC it is given.
type collect struct {
	mu  sync.Mutex
	got map[int][]byte
}

func (c *collect) sink(i int, data []byte, crc uint32) error {
	if crc32.Checksum(data, castagnoli) != crc {
		return fmt.Errorf("chunk %d: the CRC handed to the sink is not the data's", i)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.got == nil {
		c.got = map[int][]byte{}
	}
	if _, dup := c.got[i]; dup {
		return fmt.Errorf("chunk %d delivered twice", i)
	}
	c.got[i] = append([]byte(nil), data...)
	return nil
}

func fetchFrom(t *testing.T, p *pair, id string, sink transport.SinkCRC) (transport.Stats, error) {
	t.Helper()
	loc, err := p.srv.Locator(id)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return p.cli.Fetch(ctx, loc, id, sink)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		require.True(t, time.Now().Before(deadline), what)
	}
}

func TestRoundTripBitExact(t *testing.T) {
	p := newPair(t, nil)
	sizes := []int{1, 0, 3 << 20, 4097, 1 << 20, 12345, 2 << 20, 5}
	want := randomChunks(1, sizes...)
	// Half the chunks staged in the arena (read in place), half in ordinary memory (copied into the arena
	// once): both must arrive bit for bit.
	chunks := make([][]byte, len(want))
	for i, w := range want {
		if i%2 == 0 && len(w) > 0 {
			b, err := p.srv.Alloc(len(w))
			require.NoError(t, err)
			copy(b, w)
			chunks[i] = b
		} else {
			chunks[i] = append([]byte(nil), w...)
		}
	}
	released := make(chan error, 1)
	id := transport.NewHandoffID()
	require.NoError(t, p.srv.Offer(id, transport.NewBytesPayload(chunks, func(err error) { released <- err })))
	var c collect
	st, err := fetchFrom(t, p, id, c.sink)
	require.NoError(t, err)
	require.Len(t, c.got, len(want))
	total := 0
	for i, w := range want {
		require.True(t, bytes.Equal(w, c.got[i]), "chunk %d differs", i)
		total += len(w)
	}
	require.Equal(t, int64(total), st.Bytes)
	require.Equal(t, len(want), st.Chunks)

	// The consumer's notice releases the payload and reports the transfer. The server releases the payload
	// before it frees the chunk table and the copied chunks and calls OnTransfer: those are waited for.
	select {
	case err := <-released:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the payload was not released after the fetch")
	}
	require.Equal(t, 0, p.srv.Pending())
	eventually(t, "the transfer reported", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.st) > 0
	})
	p.mu.Lock()
	require.Len(t, p.st, 1)
	require.Equal(t, int64(total), p.st[0].Bytes)
	require.Equal(t, id, p.st[0].ID)
	p.mu.Unlock()
	for i, b := range chunks {
		if i%2 == 0 && len(b) > 0 {
			p.srv.Free(b)
		}
	}
	eventually(t, "the table and the copied chunks went back to the arena", func() bool { return p.srv.ArenaInUse() == 0 })

	// A handoff fetched is gone: reading it again fails clearly.
	_, err = p.srv.Locator(id)
	require.ErrorIs(t, err, transport.ErrUnknownHandoff)
}

func TestStreamedChunksArriveAsProduced(t *testing.T) {
	p := newPair(t, nil)
	want := randomChunks(2, 1<<20, 700_000, 1<<20, 333, 2<<20, 1<<20)
	sp := transport.NewStreamPayload(len(want), nil)
	id := transport.NewHandoffID()
	require.NoError(t, p.srv.Offer(id, sp))
	var c collect
	done := make(chan error, 1)
	go func() { _, err := fetchFrom(t, p, id, c.sink); done <- err }()
	// Chunks are produced while the consumer already reads, out of order, in arena memory with their CRC.
	for _, i := range []int{1, 0, 2, 4, 3, 5} {
		time.Sleep(5 * time.Millisecond)
		b, err := p.srv.Alloc(len(want[i]))
		require.NoError(t, err)
		copy(b, want[i])
		require.NoError(t, sp.PutWithCRC(i, b, crc32.Checksum(b, castagnoli)))
	}
	require.NoError(t, <-done)
	for i, w := range want {
		require.Equal(t, w, c.got[i], "chunk %d", i)
	}
	<-sp.Released()
	require.NoError(t, sp.ReleaseErr())
}

func TestFlippedBitFailsTheChunk(t *testing.T) {
	p := newPair(t, nil)
	want := randomChunks(3, 1<<20, 1<<20)
	chunks := make([][]byte, 2)
	for i := range want {
		b, err := p.srv.Alloc(len(want[i]))
		require.NoError(t, err)
		copy(b, want[i])
		chunks[i] = b
	}
	sp := transport.NewStreamPayload(2, nil)
	require.NoError(t, sp.PutWithCRC(0, chunks[0], crc32.Checksum(chunks[0], castagnoli)))
	require.NoError(t, sp.PutWithCRC(1, chunks[1], crc32.Checksum(chunks[1], castagnoli)))
	chunks[1][777_777] ^= 0x10 // corrupted in staging after its CRC was taken
	id := transport.NewHandoffID()
	require.NoError(t, p.srv.Offer(id, sp))
	var c collect
	_, err := fetchFrom(t, p, id, c.sink)
	require.ErrorIs(t, err, transport.ErrChecksum)
	require.Contains(t, err.Error(), "chunk 1")
	require.NotContains(t, c.got, 1, "a corrupted chunk reached the sink")
	// The handoff stays offered: the consumer's failure does not release it (the producer's TTL does).
	require.Equal(t, 1, p.srv.Pending())
}

func TestProducerFailureEndsTheFetch(t *testing.T) {
	p := newPair(t, nil)
	sp := transport.NewStreamPayload(3, nil)
	require.NoError(t, sp.Put(0, []byte("first")))
	id := transport.NewHandoffID()
	require.NoError(t, p.srv.Offer(id, sp))
	go func() { time.Sleep(20 * time.Millisecond); sp.Fail(fmt.Errorf("encoder exploded")) }()
	_, err := fetchFrom(t, p, id, (&collect{}).sink)
	require.ErrorIs(t, err, transport.ErrProducer)
	require.Contains(t, err.Error(), "encoder exploded")
}

func TestExpiredHandoff(t *testing.T) {
	p := newPair(t, []Option{WithHandoffTTL(100 * time.Millisecond)})
	sp := transport.NewStreamPayload(2, nil)
	require.NoError(t, sp.Put(0, []byte("only the first")))
	id := transport.NewHandoffID()
	require.NoError(t, p.srv.Offer(id, sp))
	_, err := fetchFrom(t, p, id, (&collect{}).sink)
	// The table says expired, or was already reused by the time the consumer looked again.
	require.Error(t, err)
	require.True(t, errorIsAny(err, transport.ErrExpired, transport.ErrUnknownHandoff), err.Error())
	<-sp.Released()
	require.ErrorIs(t, sp.ReleaseErr(), transport.ErrExpired)
}

func TestWithdrawAndClose(t *testing.T) {
	p := newPair(t, nil)
	sp := transport.NewStreamPayload(1, nil)
	id := transport.NewHandoffID()
	require.NoError(t, p.srv.Offer(id, sp))
	require.True(t, p.srv.Withdraw(id))
	require.False(t, p.srv.Withdraw(id))
	require.ErrorIs(t, sp.ReleaseErr(), transport.ErrWithdrawn)

	sp2 := transport.NewStreamPayload(1, nil)
	require.NoError(t, p.srv.Offer(transport.NewHandoffID(), sp2))
	require.NoError(t, p.srv.Close())
	require.ErrorIs(t, sp2.ReleaseErr(), transport.ErrClosed)
	require.ErrorIs(t, p.srv.Offer(transport.NewHandoffID(), sp2), transport.ErrClosed)
}

func TestSinkErrorAbortsTheFetch(t *testing.T) {
	p := newPair(t, nil)
	id := transport.NewHandoffID()
	require.NoError(t, p.srv.Offer(id, transport.NewBytesPayload(randomChunks(4, 1000, 1000, 1000), nil)))
	_, err := fetchFrom(t, p, id, func(i int, _ []byte, _ uint32) error {
		if i == 1 {
			return fmt.Errorf("decoder refused")
		}
		return nil
	})
	require.ErrorIs(t, err, transport.ErrSink)
	require.Contains(t, err.Error(), "decoder refused")
	eventually(t, "receive memory returned", func() bool { return p.cli.arena.InUse() == 0 })
}

func TestBadLocators(t *testing.T) {
	p := newPair(t, nil)
	for _, loc := range []string{`{`, `{"v":1,"agent":"a","md":"eA==","table":1,"chunks":1}`, `{"v":2,"agent":"","md":"eA==","table":1}`,
		`{"v":2,"agent":"a","md":"eA==","table":0,"chunks":1}`} {
		_, err := p.cli.Fetch(context.Background(), []byte(loc), "x", (&collect{}).sink)
		require.ErrorIs(t, err, ErrLocator, loc)
	}
	// Metadata that is not NIXL's.
	_, err := p.cli.Fetch(context.Background(), []byte(`{"v":2,"agent":"a","md":"eA==","table":4096,"chunks":1}`), "x", (&collect{}).sink)
	require.ErrorIs(t, err, transport.ErrUnreachable)
}

func errorIsAny(err error, targets ...error) bool {
	for _, t := range targets {
		if errorsIs(err, t) {
			return true
		}
	}
	return false
}

// TestPeerLoss kills a producer process in the middle of a handoff: the fetch must fail, naming the lost
// peer or the stalled read, within the I/O timeout — never hang, never report success.
func TestPeerLoss(t *testing.T) {
	needLibrary(t)
	if os.Getenv("SPLITZIP_NIXL_CHILD") != "" {
		t.Skip("the child's own run")
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestPeerLossProducer$", "-test.v")
	cmd.Env = append(os.Environ(), "SPLITZIP_NIXL_CHILD=1")
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := bufio.NewScanner(out)
	lines.Buffer(make([]byte, 1<<20), 1<<20)
	var loc, id string
	for lines.Scan() {
		if _, err := fmt.Sscanf(lines.Text(), "LOCATOR %s %s", &id, &loc); err == nil {
			break
		}
	}
	require.NotEmpty(t, loc, "the producer process printed no locator")

	cli, err := NewClient(fmt.Sprintf("test-peerloss-%d", os.Getpid()), WithRecvBytes(16<<20), WithIOTimeout(3*time.Second))
	require.NoError(t, err)
	defer cli.Close()
	var c collect
	got := make(chan struct{}, 8)
	done := make(chan error, 1)
	t0 := time.Now()
	go func() {
		_, err := cli.Fetch(context.Background(), []byte(loc), id, func(i int, d []byte, crc uint32) error {
			err := c.sink(i, d, crc)
			got <- struct{}{}
			return err
		})
		done <- err
	}()
	for range 2 { // the chunks the producer made before it died arrive
		select {
		case <-got:
		case err := <-done:
			t.Fatalf("fetch ended early: %v", err)
		case <-time.After(10 * time.Second):
			t.Fatal("the first chunks did not arrive")
		}
	}
	require.NoError(t, cmd.Process.Kill())
	select {
	case err := <-done:
		require.Error(t, err)
		require.True(t, errorIsAny(err, transport.ErrPeerClosed, transport.ErrTimeout), err.Error())
		t.Logf("after %v: %v", time.Since(t0).Round(time.Millisecond), err)
	case <-time.After(20 * time.Second):
		t.Fatal("the fetch hangs after its producer died")
	}
}

// TestPeerLossProducer is TestPeerLoss's producer process: two chunks ready, the third never.
func TestPeerLossProducer(t *testing.T) {
	if os.Getenv("SPLITZIP_NIXL_CHILD") == "" {
		t.Skip("runs as TestPeerLoss's child process")
	}
	needLibrary(t)
	srv, err := NewServer(fmt.Sprintf("test-peerloss-prod-%d", os.Getpid()))
	require.NoError(t, err)
	mem, _, err := MapHost(16 << 20)
	require.NoError(t, err)
	require.NoError(t, srv.UseArena(mem))
	sp := transport.NewStreamPayload(3, nil)
	for i, d := range randomChunks(5, 1<<20, 1<<20) {
		b, err := srv.Alloc(len(d))
		require.NoError(t, err)
		copy(b, d)
		require.NoError(t, sp.Put(i, b))
	}
	id := transport.NewHandoffID()
	require.NoError(t, srv.Offer(id, sp))
	loc, err := srv.Locator(id)
	require.NoError(t, err)
	fmt.Printf("LOCATOR %s %s\n", id, loc)
	time.Sleep(time.Minute) // killed by the parent
}
