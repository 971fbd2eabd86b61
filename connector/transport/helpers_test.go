package transport

import (
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// testSecret is the handoff secret of the tests that are not about access.
var testSecret = []byte("splitzip transport test secret!!")

func newServer(t testing.TB, opts ...Option) *Server {
	t.Helper()
	s, err := Listen("127.0.0.1:0", opts...)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

func addrOf(s *Server) string { return s.Addr().String() }

// makeChunks returns n chunks of pseudo-random bytes with sizes in
// [minSize, maxSize].
func makeChunks(n, minSize, maxSize int, seed uint64) [][]byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	out := make([][]byte, n)
	for i := range out {
		size := minSize
		if maxSize > minSize {
			size += r.IntN(maxSize - minSize + 1)
		}
		b := make([]byte, size)
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		out[i] = b
	}
	return out
}

// collector is a Sink that copies what it receives.
type collector struct {
	mu     sync.Mutex
	chunks map[int][]byte
	dup    int
	seen   chan int // receives each index if not nil (must be buffered enough)
}

func newCollector(seenBuf int) *collector {
	c := &collector{chunks: make(map[int][]byte)}
	if seenBuf > 0 {
		c.seen = make(chan int, seenBuf)
	}
	return c
}

func (c *collector) sink(i int, data []byte) error {
	c.mu.Lock()
	if _, ok := c.chunks[i]; ok {
		c.dup++
	}
	c.chunks[i] = append([]byte(nil), data...)
	c.mu.Unlock()
	if c.seen != nil {
		c.seen <- i
	}
	return nil
}

func (c *collector) requireEqual(t *testing.T, want [][]byte) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	require.Zero(t, c.dup, "chunks delivered twice")
	require.Len(t, c.chunks, len(want))
	for i, w := range want {
		require.Equal(t, len(w), len(c.chunks[i]), "chunk %d length", i)
		require.True(t, string(w) == string(c.chunks[i]), "chunk %d differs", i)
	}
}

// releaseRecorder returns an onRelease callback and the channel it reports on.
func releaseRecorder() (func(error), chan error) {
	ch := make(chan error, 1)
	return func(err error) { ch <- err }, ch
}

func recvWithin[T any](t testing.TB, ch <-chan T, d time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		t.Fatalf("timed out after %v waiting for %s", d, what)
		panic("unreachable")
	}
}

// waitGoroutines polls until the goroutine count is back to at most n.
func waitGoroutines(t testing.TB, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("goroutines: %d, want <= %d\n%s", runtime.NumGoroutine(), n, buf)
		}
		runtime.Gosched()
		time.Sleep(5 * time.Millisecond) // polling interval, not synchronisation
	}
}

// fakePeer accepts connections and runs handle on each; for hostile or
// broken producers.
func fakePeer(t testing.TB, handle func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// readHello consumes a client hello on a fake peer.
func readHello(c net.Conn) (hello, error) {
	var b [helloFixedLen + maxIDLen]byte
	if _, err := io.ReadFull(c, b[:helloFixedLen]); err != nil {
		return hello{}, err
	}
	h := hello{version: uint16(b[4])<<8 | uint16(b[5]), kind: b[6], token: [tokenLen]byte(b[8:24])}
	n := int(b[7])
	if _, err := io.ReadFull(c, b[helloFixedLen:helloFixedLen+n]); err != nil {
		return hello{}, err
	}
	h.id = string(b[helloFixedLen : helloFixedLen+n])
	return h, nil
}

// challenge plays a producer's side of the proof on a fake peer: it sends a
// challenge and reads the consumer's proof.
func challenge(c net.Conn, h hello) ([proofLen]byte, error) {
	ch := reply{version: h.version, status: statusChallenge, token: [tokenLen]byte{1, 2, 3}}
	var p [proofLen]byte
	if _, err := c.Write(ch.appendTo(nil)); err != nil {
		return p, err
	}
	_, err := io.ReadFull(c, p[:])
	return p, err
}

// rawHandshake plays a consumer's side of the handshake on c: hello,
// challenge, proof under secret. It returns the producer's final reply
// status.
func rawHandshake(t testing.TB, c net.Conn, kind byte, id string, secret []byte) byte {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	h := (&hello{version: ProtocolVersion, kind: kind, id: id}).appendTo(nil)
	_, err := c.Write(h)
	require.NoError(t, err)
	var b [replyLen]byte
	_, err = io.ReadFull(c, b[:])
	require.NoError(t, err)
	require.Equal(t, statusChallenge, b[6])
	p := proof(secret, [nonceLen]byte(b[12:28]), h)
	_, err = c.Write(p[:])
	require.NoError(t, err)
	_, err = io.ReadFull(c, b[:])
	require.NoError(t, err)
	msg := make([]byte, int(b[28])<<8|int(b[29]))
	_, err = io.ReadFull(c, msg)
	require.NoError(t, err)
	return b[6]
}

// proxy forwards TCP between consumers and a producer, letting a test see
// and change the producer-to-consumer byte stream of each connection.
type proxy struct {
	ln     net.Listener
	target string
	// mangle is called on every piece of the producer-to-consumer stream
	// of connection conn at stream offset off; it may modify b in place and
	// returns how many bytes to forward before cutting both sides (-1: all,
	// keep going).
	mangle func(conn int, off int64, b []byte) int
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
	n      int
}

func newProxy(t testing.TB, target string, mangle func(conn int, off int64, b []byte) int) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &proxy{ln: ln, target: target, mangle: mangle}
	p.wg.Add(1)
	go p.loop()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *proxy) loop() {
	defer p.wg.Done()
	for {
		down, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			down.Close()
			continue
		}
		p.mu.Lock()
		idx := p.n
		p.n++
		p.conns = append(p.conns, down, up)
		p.mu.Unlock()
		p.wg.Add(2)
		go func() { // consumer -> producer, unchanged
			defer p.wg.Done()
			io.Copy(up, down)
			up.Close()
			down.Close()
		}()
		go func() { // producer -> consumer, through mangle
			defer p.wg.Done()
			defer up.Close()
			defer down.Close()
			buf := make([]byte, 32<<10)
			var off int64
			for {
				n, err := up.Read(buf)
				if n > 0 {
					keep := p.mangle(idx, off, buf[:n])
					if keep >= 0 {
						down.Write(buf[:keep])
						return
					}
					if _, werr := down.Write(buf[:n]); werr != nil {
						return
					}
					off += int64(n)
				}
				if err != nil {
					return
				}
			}
		}()
	}
}

func requireKind(t testing.TB, err error, kind error) *Error {
	t.Helper()
	require.Error(t, err)
	require.ErrorIs(t, err, kind, "error: %v", err)
	var te *Error
	require.True(t, errors.As(err, &te), "error %T is not *Error: %v", err, err)
	require.Contains(t, err.Error(), "splitzip/transport: ")
	return te
}
