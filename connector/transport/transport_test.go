package transport

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRoundTrip(t *testing.T) {
	for _, conns := range []int{1, 4, 8} {
		t.Run(fmt.Sprintf("conns=%d", conns), func(t *testing.T) {
			var hooked atomic.Pointer[Stats]
			s := newServer(t, WithOnTransfer(func(st Stats) { hooked.Store(&st) }))
			chunks := makeChunks(200, 0, 64<<10, uint64(conns))
			chunks[0], chunks[1] = nil, []byte{42} // empty and 1-byte chunks
			onRelease, released := releaseRecorder()
			id := NewHandoffID()
			require.NoError(t, s.Offer(id, testSecret, NewBytesPayload(chunks, onRelease)))

			col := newCollector(0)
			st, err := Fetch(context.Background(), addrOf(s), id, testSecret, col.sink, WithConns(conns))
			require.NoError(t, err)
			col.requireEqual(t, chunks)

			var total int64
			for _, c := range chunks {
				total += int64(len(c))
			}
			require.Equal(t, total, st.Bytes)
			require.Equal(t, len(chunks), st.Chunks)
			require.LessOrEqual(t, st.Conns, conns)
			require.GreaterOrEqual(t, st.Conns, 1)
			require.NoError(t, recvWithin(t, released, 5*time.Second, "release"))
			require.Zero(t, s.Pending())

			hs := hooked.Load()
			require.NotNil(t, hs, "OnTransfer called before release")
			require.NoError(t, hs.Err)
			require.Equal(t, total, hs.Bytes)
			require.Equal(t, len(chunks), hs.Chunks)

			// A handoff is fetched once.
			_, err = Fetch(context.Background(), addrOf(s), id, testSecret, col.sink, WithConns(conns))
			te := requireKind(t, err, ErrUnknownHandoff)
			require.Contains(t, te.Error(), "already fetched")
		})
	}
}

func TestEmptyPayload(t *testing.T) {
	s := newServer(t)
	id := NewHandoffID()
	require.NoError(t, s.Offer(id, testSecret, NewBytesPayload(nil, nil)))
	st, err := Fetch(context.Background(), addrOf(s), id, testSecret, func(int, []byte) error {
		return errors.New("no chunk expected")
	})
	require.NoError(t, err)
	require.Zero(t, st.Chunks)
}

func TestPipelinedProducer(t *testing.T) {
	s := newServer(t)
	const n = 8
	chunks := makeChunks(n, 1000, 50_000, 7)
	onRelease, released := releaseRecorder()
	p := NewStreamPayload(n, onRelease)
	id := NewHandoffID()
	require.NoError(t, s.Offer(id, testSecret, p))

	col := newCollector(n)
	done := make(chan error, 1)
	go func() {
		_, err := Fetch(context.Background(), addrOf(s), id, testSecret, col.sink, WithConns(3))
		done <- err
	}()

	require.NoError(t, p.Put(0, chunks[0]))
	// The consumer holds chunk 0 while chunks 1..7 do not exist yet.
	require.Equal(t, 0, recvWithin(t, col.seen, 10*time.Second, "chunk 0"))
	select {
	case err := <-done:
		t.Fatalf("fetch ended before the producer finished: %v", err)
	default:
	}
	for i := n - 1; i >= 1; i-- { // out of order on purpose
		require.NoError(t, p.Put(i, chunks[i]))
	}
	require.NoError(t, recvWithin(t, done, 10*time.Second, "fetch"))
	col.requireEqual(t, chunks)
	require.NoError(t, recvWithin(t, released, 5*time.Second, "release"))
	require.ErrorIs(t, p.Put(1, nil), ErrReleased)
}

// flipAt returns a proxy mangler flipping one bit at stream offset at on the
// first connection.
func flipAt(at int64) func(int, int64, []byte) int {
	return func(conn int, off int64, b []byte) int {
		if conn == 0 && at >= off && at < off+int64(len(b)) {
			b[at-off] ^= 0x10
		}
		return -1
	}
}

func TestFlippedBit(t *testing.T) {
	s := newServer(t)
	chunks := makeChunks(16, 4096, 4096, 3)
	id := NewHandoffID()
	require.NoError(t, s.Offer(id, testSecret, NewBytesPayload(chunks, nil)))

	// One connection: the stream is reply, then chunk 0's header, then its
	// data and CRC trailer. Flip a bit in chunk 1's data.
	px := newProxy(t, addrOf(s), flipAt(replyLen+frameLen+4096+trailerLen+frameLen+100))
	col := newCollector(0)
	_, err := Fetch(context.Background(), px.addr(), id, testSecret, col.sink, WithConns(1))
	te := requireKind(t, err, ErrChecksum)
	require.Equal(t, 1, te.Chunk)
	require.Contains(t, err.Error(), "chunk 1")
	require.Contains(t, err.Error(), id[:12])
	require.NotContains(t, err.Error(), id, "the full id is a capability")

	// The producer keeps the handoff (retry works) and serves others.
	other := NewHandoffID()
	require.NoError(t, s.Offer(other, testSecret, NewBytesPayload(chunks, nil)))
	col2 := newCollector(0)
	_, err = Fetch(context.Background(), addrOf(s), other, testSecret, col2.sink)
	require.NoError(t, err)
	col2.requireEqual(t, chunks)
	col3 := newCollector(0)
	_, err = Fetch(context.Background(), addrOf(s), id, testSecret, col3.sink)
	require.NoError(t, err)
	col3.requireEqual(t, chunks)
}

func TestProducerKilledMidTransfer(t *testing.T) {
	t.Run("connection cut", func(t *testing.T) {
		s := newServer(t)
		chunks := makeChunks(32, 32<<10, 32<<10, 5)
		id := NewHandoffID()
		require.NoError(t, s.Offer(id, testSecret, NewBytesPayload(chunks, nil)))
		px := newProxy(t, addrOf(s), func(conn int, off int64, b []byte) int {
			if off+int64(len(b)) > 200<<10 {
				return int(max(0, 200<<10-off))
			}
			return -1
		})
		col := newCollector(0)
		_, err := Fetch(context.Background(), px.addr(), id, testSecret, col.sink, WithConns(2))
		requireKind(t, err, ErrPeerClosed)
		require.Less(t, len(col.chunks), len(chunks))

		// Other requests are still served.
		other := NewHandoffID()
		require.NoError(t, s.Offer(other, testSecret, NewBytesPayload(chunks, nil)))
		_, err = Fetch(context.Background(), addrOf(s), other, testSecret, newCollector(0).sink)
		require.NoError(t, err)
	})
	t.Run("server closed", func(t *testing.T) {
		base := runtime.NumGoroutine()
		s, err := Listen("127.0.0.1:0")
		require.NoError(t, err)
		onRelease, released := releaseRecorder()
		p := NewStreamPayload(4, onRelease)
		id := NewHandoffID()
		require.NoError(t, s.Offer(id, testSecret, p))
		require.NoError(t, p.Put(0, []byte("first")))
		col := newCollector(4)
		done := make(chan error, 1)
		go func() {
			_, err := Fetch(context.Background(), addrOf(s), id, testSecret, col.sink)
			done <- err
		}()
		recvWithin(t, col.seen, 10*time.Second, "chunk 0")
		require.NoError(t, s.Close())
		requireKind(t, recvWithin(t, done, 10*time.Second, "fetch"), ErrPeerClosed)
		require.ErrorIs(t, recvWithin(t, released, 5*time.Second, "release"), ErrClosed)
		require.ErrorIs(t, s.Offer(NewHandoffID(), testSecret, p), ErrClosed)
		waitGoroutines(t, base)
	})
}

func TestUnknownHandoff(t *testing.T) {
	s := newServer(t)
	_, err := Fetch(context.Background(), addrOf(s), "no-such-id", testSecret, newCollector(0).sink)
	te := requireKind(t, err, ErrUnknownHandoff)
	require.Equal(t, "no-such-id", te.ID)
	require.Contains(t, err.Error(), "no-such-id")
}

func TestVersionMismatch(t *testing.T) {
	t.Run("newer consumer", func(t *testing.T) {
		s := newServer(t)
		id := NewHandoffID()
		require.NoError(t, s.Offer(id, testSecret, NewBytesPayload([][]byte{{1}}, nil)))
		_, err := Fetch(context.Background(), addrOf(s), id, testSecret, newCollector(0).sink, withVersion(ProtocolVersion+1))
		requireKind(t, err, ErrIncompatibleVersion)
		require.Contains(t, err.Error(), fmt.Sprintf("version %d", ProtocolVersion))
		require.Equal(t, 1, s.Pending(), "a rejected peer must not consume the handoff")
	})
	t.Run("newer producer", func(t *testing.T) {
		s := newServer(t, withVersion(ProtocolVersion+1))
		id := NewHandoffID()
		require.NoError(t, s.Offer(id, testSecret, NewBytesPayload([][]byte{{1}}, nil)))
		_, err := Fetch(context.Background(), addrOf(s), id, testSecret, newCollector(0).sink)
		requireKind(t, err, ErrIncompatibleVersion)
	})
	t.Run("not our protocol", func(t *testing.T) {
		addr := fakePeer(t, func(c net.Conn) {
			readHello(c)
			io.WriteString(c, "HTTP/1.1 400 Bad Request\r\n\r\n")
		})
		_, err := Fetch(context.Background(), addr, "x", testSecret, newCollector(0).sink)
		requireKind(t, err, ErrProtocol)
	})
}

func TestDeadlines(t *testing.T) {
	t.Run("silent producer", func(t *testing.T) {
		addr := fakePeer(t, func(c net.Conn) { io.Copy(io.Discard, c) })
		start := time.Now()
		_, err := Fetch(context.Background(), addr, "x", testSecret, newCollector(0).sink, WithIOTimeout(100*time.Millisecond))
		requireKind(t, err, ErrTimeout)
		require.Less(t, time.Since(start), 10*time.Second)
	})
	t.Run("producer stalls mid-chunk", func(t *testing.T) {
		addr := fakePeer(t, func(c net.Conn) {
			h, err := readHello(c)
			if err != nil {
				return
			}
			if _, err := challenge(c, h); err != nil {
				return
			}
			r := reply{version: h.version, numChunks: 1}
			c.Write(r.appendTo(nil))
			var req [reqLen]byte
			io.ReadFull(c, req[:])
			f := frame{typ: frameChunk, length: 1000}
			var hdr [frameLen]byte
			f.put(hdr[:])
			c.Write(hdr[:])
			c.Write(make([]byte, 10)) // then nothing
			io.Copy(io.Discard, c)
		})
		// The whole handshake must fit in one I/O timeout for the stall to come where this test wants it (in
		// chunk 0): a second leaves a loaded machine room, and is all the test waits.
		_, err := Fetch(context.Background(), addr, "x", testSecret, newCollector(0).sink, WithIOTimeout(time.Second))
		te := requireKind(t, err, ErrTimeout)
		require.Equal(t, 0, te.Chunk)
	})
	t.Run("silent consumer", func(t *testing.T) {
		s := newServer(t, WithIOTimeout(100*time.Millisecond))
		c, err := net.Dial("tcp", addrOf(s))
		require.NoError(t, err)
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = c.Read(make([]byte, 1))
		require.ErrorIs(t, err, io.EOF, "the producer closes an idle connection")
	})
	t.Run("slow production is kept alive", func(t *testing.T) {
		// The producer sends a keepalive every quarter of its I/O timeout: half a second leaves each one
		// 375 ms to arrive before the consumer's read deadline, on a loaded machine too.
		const ioTimeout = 500 * time.Millisecond
		s := newServer(t, WithIOTimeout(ioTimeout))
		p := NewStreamPayload(2, nil)
		id := NewHandoffID()
		require.NoError(t, s.Offer(id, testSecret, p))
		require.NoError(t, p.Put(0, []byte("now")))
		// Chunk 1 is produced long after several I/O timeouts.
		timer := time.AfterFunc(4*ioTimeout, func() { p.Put(1, []byte("later")) })
		defer timer.Stop()
		col := newCollector(0)
		_, err := Fetch(context.Background(), addrOf(s), id, testSecret, col.sink, WithIOTimeout(ioTimeout))
		require.NoError(t, err)
		col.requireEqual(t, [][]byte{[]byte("now"), []byte("later")})
	})
	t.Run("context", func(t *testing.T) {
		s := newServer(t)
		p := NewStreamPayload(1, nil)
		id := NewHandoffID()
		require.NoError(t, s.Offer(id, testSecret, p))
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := Fetch(ctx, addrOf(s), id, testSecret, newCollector(0).sink)
		requireKind(t, err, context.DeadlineExceeded)
	})
}

func TestExpiry(t *testing.T) {
	t.Run("before fetch", func(t *testing.T) {
		s := newServer(t, WithHandoffTTL(50*time.Millisecond))
		onRelease, released := releaseRecorder()
		id := NewHandoffID()
		require.NoError(t, s.Offer(id, testSecret, NewBytesPayload([][]byte{{1}}, onRelease)))
		require.ErrorIs(t, recvWithin(t, released, 10*time.Second, "expiry"), ErrExpired)
		_, err := Fetch(context.Background(), addrOf(s), id, testSecret, newCollector(0).sink)
		requireKind(t, err, ErrExpired)
	})
	t.Run("during fetch", func(t *testing.T) {
		// The TTL runs from the offer: the handshake and chunk 0 must come within it for the expiry to fall
		// on chunk 1, as this test wants.
		s := newServer(t, WithHandoffTTL(time.Second))
		onRelease, released := releaseRecorder()
		p := NewStreamPayload(2, onRelease)
		id := NewHandoffID()
		require.NoError(t, s.Offer(id, testSecret, p))
		require.NoError(t, p.Put(0, []byte("only this one")))
		col := newCollector(2)
		_, err := Fetch(context.Background(), addrOf(s), id, testSecret, col.sink)
		te := requireKind(t, err, ErrExpired)
		require.Equal(t, 1, te.Chunk)
		require.ErrorIs(t, recvWithin(t, released, 10*time.Second, "release"), ErrExpired)
	})
}

func TestWithdraw(t *testing.T) {
	s := newServer(t)
	onRelease, released := releaseRecorder()
	id := NewHandoffID()
	require.NoError(t, s.Offer(id, testSecret, NewBytesPayload([][]byte{{1}}, onRelease)))
	require.True(t, s.Withdraw(id))
	require.False(t, s.Withdraw(id))
	require.ErrorIs(t, recvWithin(t, released, 5*time.Second, "release"), ErrWithdrawn)
	_, err := Fetch(context.Background(), addrOf(s), id, testSecret, newCollector(0).sink)
	te := requireKind(t, err, ErrUnknownHandoff)
	require.Contains(t, te.Error(), "withdrawn")
}

func TestProducerFailure(t *testing.T) {
	s := newServer(t)
	p := NewStreamPayload(3, nil)
	id := NewHandoffID()
	require.NoError(t, s.Offer(id, testSecret, p))
	require.NoError(t, p.Put(0, []byte("ok")))
	col := newCollector(3)
	done := make(chan error, 1)
	go func() {
		_, err := Fetch(context.Background(), addrOf(s), id, testSecret, col.sink, WithConns(1))
		done <- err
	}()
	recvWithin(t, col.seen, 10*time.Second, "chunk 0")
	p.Fail(errors.New("encoder exploded"))
	err := recvWithin(t, done, 10*time.Second, "fetch")
	requireKind(t, err, ErrProducer)
	require.Contains(t, err.Error(), "encoder exploded")
}

func TestSinkError(t *testing.T) {
	s := newServer(t)
	chunks := makeChunks(10, 100, 100, 1)
	id := NewHandoffID()
	require.NoError(t, s.Offer(id, testSecret, NewBytesPayload(chunks, nil)))
	boom := errors.New("decoder rejected")
	_, err := Fetch(context.Background(), addrOf(s), id, testSecret, func(i int, _ []byte) error {
		if i == 5 {
			return boom
		}
		return nil
	}, WithConns(2))
	te := requireKind(t, err, ErrSink)
	require.ErrorIs(t, err, boom)
	require.Equal(t, 5, te.Chunk)
	col := newCollector(0)
	_, err = Fetch(context.Background(), addrOf(s), id, testSecret, col.sink)
	require.NoError(t, err, "a failed transfer leaves the handoff for a retry")
	col.requireEqual(t, chunks)
}

func TestBusy(t *testing.T) {
	s := newServer(t, WithMaxTransfers(1))
	p := NewStreamPayload(2, nil)
	id := NewHandoffID()
	require.NoError(t, s.Offer(id, testSecret, p))
	require.NoError(t, p.Put(0, []byte("a")))
	col := newCollector(2)
	done := make(chan error, 1)
	go func() {
		_, err := Fetch(context.Background(), addrOf(s), id, testSecret, col.sink)
		done <- err
	}()
	recvWithin(t, col.seen, 10*time.Second, "chunk 0") // the transfer is in progress

	other := NewHandoffID()
	require.NoError(t, s.Offer(other, testSecret, NewBytesPayload([][]byte{{1}}, nil)))
	_, err := Fetch(context.Background(), addrOf(s), other, testSecret, newCollector(0).sink)
	requireKind(t, err, ErrBusy)

	require.NoError(t, p.Put(1, []byte("b")))
	require.NoError(t, recvWithin(t, done, 10*time.Second, "fetch"))
	_, err = Fetch(context.Background(), addrOf(s), other, testSecret, newCollector(0).sink)
	require.NoError(t, err)
}

func TestMaxConns(t *testing.T) {
	s := newServer(t, WithMaxConns(1))
	hold, err := net.Dial("tcp", addrOf(s)) // occupies the only slot
	require.NoError(t, err)
	defer hold.Close()
	id := NewHandoffID()
	require.NoError(t, s.Offer(id, testSecret, NewBytesPayload([][]byte{{1}}, nil)))
	var lastErr error
	require.Eventually(t, func() bool {
		_, lastErr = Fetch(context.Background(), addrOf(s), id, testSecret, newCollector(0).sink)
		return errors.Is(lastErr, ErrBusy)
	}, 10*time.Second, 10*time.Millisecond)
	hold.Close()
	require.Eventually(t, func() bool {
		_, lastErr = Fetch(context.Background(), addrOf(s), id, testSecret, newCollector(0).sink)
		return lastErr == nil
	}, 10*time.Second, 10*time.Millisecond)
}

func TestHostileProducer(t *testing.T) {
	serve := func(n uint32, f frame) string {
		return fakePeer(t, func(c net.Conn) {
			h, err := readHello(c)
			if err != nil {
				return
			}
			if _, err := challenge(c, h); err != nil {
				return
			}
			r := reply{version: h.version, numChunks: n}
			c.Write(r.appendTo(nil))
			var req [reqLen]byte
			io.ReadFull(c, req[:])
			var hdr [frameLen]byte
			f.put(hdr[:])
			c.Write(hdr[:])
			io.Copy(io.Discard, c)
		})
	}
	t.Run("chunk count", func(t *testing.T) {
		_, err := Fetch(context.Background(), serve(1<<31, frame{}), "x", testSecret, newCollector(0).sink)
		requireKind(t, err, ErrTooLarge)
	})
	t.Run("chunk length", func(t *testing.T) {
		_, err := Fetch(context.Background(), serve(1, frame{typ: frameChunk, length: 0xFFFFFFFF}), "x", testSecret, newCollector(0).sink)
		requireKind(t, err, ErrTooLarge)
	})
	t.Run("wrong index", func(t *testing.T) {
		_, err := Fetch(context.Background(), serve(1, frame{typ: frameChunk, index: 7}), "x", testSecret, newCollector(0).sink)
		requireKind(t, err, ErrProtocol)
	})
	t.Run("error message length", func(t *testing.T) {
		_, err := Fetch(context.Background(), serve(1, frame{typ: frameError, code: codeProducer, length: 1 << 30}), "x", testSecret, newCollector(0).sink)
		requireKind(t, err, ErrProtocol)
	})
	t.Run("consumer limit", func(t *testing.T) {
		s := newServer(t)
		id := NewHandoffID()
		require.NoError(t, s.Offer(id, testSecret, NewBytesPayload([][]byte{make([]byte, 8192)}, nil)))
		_, err := Fetch(context.Background(), addrOf(s), id, testSecret, newCollector(0).sink, WithMaxChunkSize(4096))
		requireKind(t, err, ErrTooLarge)
	})
	t.Run("producer limit", func(t *testing.T) {
		s := newServer(t, WithMaxChunkSize(4096))
		id := NewHandoffID()
		require.NoError(t, s.Offer(id, testSecret, NewBytesPayload([][]byte{make([]byte, 8192)}, nil)))
		_, err := Fetch(context.Background(), addrOf(s), id, testSecret, newCollector(0).sink)
		requireKind(t, err, ErrTooLarge)
	})
}

func TestHostileConsumer(t *testing.T) {
	s := newServer(t, WithIOTimeout(time.Second))
	id := NewHandoffID()
	require.NoError(t, s.Offer(id, testSecret, NewBytesPayload([][]byte{{1, 2, 3}}, nil)))
	for _, tc := range []struct {
		name string
		send func(c net.Conn)
	}{
		{"garbage", func(c net.Conn) { io.WriteString(c, "GET / HTTP/1.1\r\n\r\n") }},
		{"empty id", func(c net.Conn) { c.Write((&hello{version: ProtocolVersion, kind: kindOpen}).appendTo(nil)) }},
		{"bad kind", func(c net.Conn) { c.Write((&hello{version: ProtocolVersion, kind: 9, id: id}).appendTo(nil)) }},
		{"short proof", func(c net.Conn) {
			c.Write((&hello{version: ProtocolVersion, kind: kindOpen, id: id}).appendTo(nil))
			c.Write(make([]byte, proofLen-1))
			c.(*net.TCPConn).CloseWrite()
		}},
		{"index out of range", func(c net.Conn) {
			require.Equal(t, codeOK, rawHandshake(t, c, kindOpen, id, testSecret))
			var req [reqLen]byte
			putRequest(req[:], reqGet, 1000)
			c.Write(req[:])
		}},
		{"unknown request", func(c net.Conn) {
			require.Equal(t, codeOK, rawHandshake(t, c, kindOpen, id, testSecret))
			c.Write([]byte{77, 0, 0, 0, 0, 0, 0, 0})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", addrOf(s))
			require.NoError(t, err)
			defer c.Close()
			tc.send(c)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err = io.Copy(io.Discard, c) // the producer answers and closes
			require.NoError(t, err)
		})
	}
	col := newCollector(0)
	_, err := Fetch(context.Background(), addrOf(s), id, testSecret, col.sink)
	require.NoError(t, err, "hostile consumers did not consume the handoff")
	col.requireEqual(t, [][]byte{{1, 2, 3}})
}

func TestRateLimit(t *testing.T) {
	const rate = 8 << 20 // bytes per second
	chunks := makeChunks(16, 256<<10, 256<<10, 9)
	total := 16 * 256 << 10
	want := time.Duration(float64(total) / rate * float64(time.Second))
	t.Run("producer", func(t *testing.T) {
		s := newServer(t, WithRateLimit(rate))
		id := NewHandoffID()
		require.NoError(t, s.Offer(id, testSecret, NewBytesPayload(chunks, nil)))
		start := time.Now()
		_, err := Fetch(context.Background(), addrOf(s), id, testSecret, newCollector(0).sink)
		require.NoError(t, err)
		require.GreaterOrEqual(t, time.Since(start), want*8/10)
	})
	t.Run("consumer", func(t *testing.T) {
		s := newServer(t)
		id := NewHandoffID()
		require.NoError(t, s.Offer(id, testSecret, NewBytesPayload(chunks, nil)))
		start := time.Now()
		_, err := Fetch(context.Background(), addrOf(s), id, testSecret, newCollector(0).sink, WithRateLimit(rate))
		require.NoError(t, err)
		require.GreaterOrEqual(t, time.Since(start), want*8/10)
	})
}

func TestOptionsValidate(t *testing.T) {
	for _, o := range []Option{WithConns(0), WithConns(65), WithWindow(0), WithIOTimeout(0),
		WithMaxChunkSize(0), WithMaxChunks(0), WithRateLimit(-1), WithSocketBuffer(-1),
		WithHandoffTTL(-time.Second), WithMaxTransfers(0), WithMaxConns(0)} {
		_, err := Listen("127.0.0.1:0", o)
		require.Error(t, err)
		_, err = Fetch(context.Background(), "127.0.0.1:1", "x", testSecret, newCollector(0).sink, o)
		require.Error(t, err)
	}
	s := newServer(t, WithMaxChunks(2))
	require.Error(t, s.Offer("", testSecret, NewBytesPayload(nil, nil)))
	require.Error(t, s.Offer(string(make([]byte, 256)), testSecret, NewBytesPayload(nil, nil)))
	require.ErrorIs(t, s.Offer("x", testSecret, NewBytesPayload(make([][]byte, 3), nil)), ErrTooLarge)
	require.NoError(t, s.Offer("x", testSecret, NewBytesPayload(nil, nil)))
	require.Error(t, s.Offer("x", testSecret, NewBytesPayload(nil, nil)), "duplicate id")
}

func TestUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	_, err = Fetch(context.Background(), addr, "x", testSecret, newCollector(0).sink)
	requireKind(t, err, ErrUnreachable)
}

// TestManyTransfers runs 10,000 small transfers and checks that goroutines
// and heap come back to where they were.
func TestManyTransfers(t *testing.T) {
	n := 10_000
	if testing.Short() || raceEnabled {
		n = 1_000
	}
	runtime.GC()
	base := runtime.NumGoroutine()
	s, err := Listen("127.0.0.1:0")
	require.NoError(t, err)
	defer s.Close()
	var released atomic.Int64
	onRelease := func(err error) {
		if err == nil {
			released.Add(1)
		}
	}
	small := makeChunks(4, 1024, 1024, 11)
	var heapMid uint64
	var ms runtime.MemStats
	for i := range n {
		chunks := small[:1]
		conns := 1
		if i%10 == 0 {
			chunks, conns = small, 4
		}
		id := NewHandoffID()
		require.NoError(t, s.Offer(id, testSecret, NewBytesPayload(chunks, onRelease)))
		var got atomic.Int64
		_, err := Fetch(context.Background(), addrOf(s), id, testSecret, func(int, []byte) error {
			got.Add(1)
			return nil
		}, WithConns(conns))
		require.NoError(t, err, "transfer %d", i)
		require.EqualValues(t, len(chunks), got.Load())
		if i == n/5 {
			runtime.GC()
			runtime.ReadMemStats(&ms)
			heapMid = ms.HeapAlloc
		}
	}
	require.Eventually(t, func() bool { return released.Load() == int64(n) }, 10*time.Second, 5*time.Millisecond)
	require.Zero(t, s.Pending())
	waitGoroutines(t, base+1) // the accept loop
	runtime.GC()
	runtime.ReadMemStats(&ms)
	require.Less(t, ms.HeapAlloc, heapMid+8<<20, "heap grew from %d to %d", heapMid, ms.HeapAlloc)
	require.NoError(t, s.Close())
	waitGoroutines(t, base)
}

// TestRetrySupersedes: a consumer that opens the same handoff again (a retry
// after a failure the producer has not noticed yet) takes over the transfer.
func TestRetrySupersedes(t *testing.T) {
	s := newServer(t, WithMaxTransfers(1))
	p := NewStreamPayload(2, nil)
	id := NewHandoffID()
	require.NoError(t, s.Offer(id, testSecret, p))
	require.NoError(t, p.Put(0, []byte("a")))
	col := newCollector(2)
	first := make(chan error, 1)
	go func() {
		_, err := Fetch(context.Background(), addrOf(s), id, testSecret, col.sink)
		first <- err
	}()
	recvWithin(t, col.seen, 10*time.Second, "chunk 0")

	col2 := newCollector(2)
	second := make(chan error, 1)
	go func() {
		_, err := Fetch(context.Background(), addrOf(s), id, testSecret, col2.sink)
		second <- err
	}()
	err := recvWithin(t, first, 10*time.Second, "first fetch")
	requireKind(t, err, ErrBusy)
	require.Contains(t, err.Error(), "superseded")
	require.NoError(t, p.Put(1, []byte("b")))
	require.NoError(t, recvWithin(t, second, 10*time.Second, "second fetch"))
	col2.requireEqual(t, [][]byte{[]byte("a"), []byte("b")})
}

// TestWireGolden pins the example exchange of PROTOCOL.md.
func TestWireGolden(t *testing.T) {
	s := newServer(t)
	secret := []byte("0123456789abcdef")
	require.NoError(t, s.Offer("ab", secret, NewBytesPayload([][]byte{[]byte("hi")}, nil)))
	c, err := net.Dial("tcp", addrOf(s))
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	mustRead := func(n int) []byte {
		b := make([]byte, n)
		_, err := io.ReadFull(c, b)
		require.NoError(t, err)
		return b
	}
	hello := append([]byte{0x53, 0x5A, 0x54, 0x50, 0x00, 0x02, 0x01, 0x02}, make([]byte, 16)...)
	hello = append(hello, 'a', 'b')
	_, err = c.Write(hello)
	require.NoError(t, err)
	r := mustRead(32)
	require.Equal(t, []byte{0x53, 0x5A, 0x54, 0x50, 0x00, 0x02, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00}, r[:12], "challenge")
	nonce := r[12:28]
	require.NotEqual(t, make([]byte, 16), nonce, "nonce")
	require.Equal(t, []byte{0, 0, 0, 0}, r[28:])
	// The proof as PROTOCOL.md states it, with the standard library's HMAC.
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("splitzip transport v2 fetch proof\x00"))
	m.Write(nonce)
	m.Write(hello)
	_, err = c.Write(m.Sum(nil))
	require.NoError(t, err)
	r = mustRead(32)
	require.Equal(t, []byte{0x53, 0x5A, 0x54, 0x50, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01}, r[:12], "reply")
	require.NotEqual(t, make([]byte, 16), r[12:28], "token")
	require.Equal(t, []byte{0, 0, 0, 0}, r[28:])
	_, err = c.Write([]byte{0x01, 0, 0, 0, 0, 0, 0, 0})
	require.NoError(t, err)
	require.Equal(t, []byte{0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0, 0x68, 0x69, 0xF5, 0x9D, 0xD9, 0xC2}, mustRead(22))
	_, err = c.Write([]byte{0x02, 0, 0, 0, 0, 0, 0, 0})
	require.NoError(t, err)
	require.Equal(t, []byte{0x14, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0}, mustRead(16))
	_, err = c.Read(make([]byte, 1))
	require.ErrorIs(t, err, io.EOF)
	require.Zero(t, s.Pending())
}

// A payload that knows its chunks' CRC-32C has it sent as is; the consumer verifies it and hands it to a
// SinkCRC. A wrong known CRC fails the transfer like corruption.
func TestKnownChunkCRC(t *testing.T) {
	srv := newServer(t)
	p := NewStreamPayload(2, nil)
	a, b := []byte("first chunk"), []byte("second")
	require.NoError(t, p.PutWithCRC(0, a, crcUpdate(0, a)))
	require.NoError(t, p.Put(1, b))
	id := NewHandoffID()
	require.NoError(t, srv.Offer(id, testSecret, p))
	got := map[int]uint32{}
	var mu sync.Mutex
	_, err := FetchCRC(context.Background(), srv.Addr().String(), id, testSecret, func(i int, data []byte, crc uint32) error {
		mu.Lock()
		got[i] = crc
		mu.Unlock()
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, map[int]uint32{0: crcUpdate(0, a), 1: crcUpdate(0, b)}, got)

	bad := NewStreamPayload(1, nil)
	require.NoError(t, bad.PutWithCRC(0, a, crcUpdate(0, a)^1))
	id2 := NewHandoffID()
	require.NoError(t, srv.Offer(id2, testSecret, bad))
	_, err = Fetch(context.Background(), srv.Addr().String(), id2, testSecret, func(int, []byte) error { return nil })
	require.ErrorIs(t, err, ErrChecksum)
}
