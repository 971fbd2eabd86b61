package transport

import (
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/splitzip/splitzip/internal/testpki"
	"github.com/stretchr/testify/require"
)

// answer runs the consumer's side of a handshake for id under secret on a new connection and returns the
// producer's final reply, byte for byte (header and message).
func answer(t *testing.T, addr string, kind byte, token [tokenLen]byte, id string, secret []byte) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	h := (&hello{version: ProtocolVersion, kind: kind, token: token, id: id}).appendTo(nil)
	_, err = c.Write(h)
	require.NoError(t, err)
	var ch [replyLen]byte
	_, err = io.ReadFull(c, ch[:])
	require.NoError(t, err)
	require.Equal(t, statusChallenge, ch[6], "every hello is challenged, whatever its id")
	require.Equal(t, make([]byte, 4), ch[8:12], "a challenge says nothing of the handoff")
	p := proof(secret, [nonceLen]byte(ch[12:28]), h)
	_, err = c.Write(p[:])
	require.NoError(t, err)
	rest := make([]byte, replyLen)
	_, err = io.ReadFull(c, rest)
	require.NoError(t, err)
	msg := make([]byte, int(rest[28])<<8|int(rest[29]))
	_, err = io.ReadFull(c, msg)
	require.NoError(t, err)
	return append(rest, msg...)
}

// A stranger who knows a handoff's id but not its secret gets the answer an id that never existed gets, byte
// for byte, and leaves the handoff as it was: not claimed, not superseded, still fetchable by its consumer.
func TestStrangerLearnsNothing(t *testing.T) {
	var transfers atomic.Int32
	s := newServer(t, WithOnTransfer(func(Stats) { transfers.Add(1) }))
	id := NewHandoffID()
	secret := NewSecret()
	p := NewStreamPayload(3, nil)
	require.NoError(t, s.Offer(id, secret, p))
	require.NoError(t, p.Put(0, []byte("prompt bytes")))

	stranger := NewSecret()
	unknown := answer(t, addrOf(s), kindOpen, [tokenLen]byte{}, NewHandoffID(), stranger)
	require.Equal(t, codeUnknown, unknown[6])
	require.Equal(t, make([]byte, 4), unknown[8:12], "no chunk count")
	require.Equal(t, make([]byte, tokenLen), unknown[12:28], "no token")
	require.Contains(t, string(unknown[replyLen:]), msgDenied)
	for _, tc := range []struct {
		name   string
		kind   byte
		secret []byte
	}{
		{"open, random secret", kindOpen, stranger},
		{"open, secret one byte off", kindOpen, append(append([]byte(nil), secret[:len(secret)-1]...), secret[len(secret)-1]^1)},
		{"open, secret prefix", kindOpen, secret[:MinSecretLen]},
		{"join", kindJoin, stranger},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := answer(t, addrOf(s), tc.kind, [tokenLen]byte{}, id, tc.secret)
			require.Equal(t, unknown, got, "a wrong secret must get the unknown id's answer")
		})
	}
	// Through Fetch: the consumer's error says what the producer said, no more.
	_, err := Fetch(context.Background(), addrOf(s), id, stranger, newCollector(0).sink)
	requireKind(t, err, ErrUnknownHandoff)
	require.Equal(t, 1, s.Pending())

	// The real consumer fetches it; a stranger's OPEN meanwhile neither supersedes nor disturbs it.
	col := newCollector(3)
	done := make(chan error, 1)
	go func() {
		_, err := Fetch(context.Background(), addrOf(s), id, secret, col.sink)
		done <- err
	}()
	recvWithin(t, col.seen, 10*time.Second, "chunk 0")
	require.Equal(t, unknown, answer(t, addrOf(s), kindOpen, [tokenLen]byte{}, id, stranger))
	require.NoError(t, p.Put(1, []byte("more")))
	require.NoError(t, p.Put(2, []byte("last")))
	require.NoError(t, recvWithin(t, done, 10*time.Second, "fetch"))
	col.requireEqual(t, [][]byte{[]byte("prompt bytes"), []byte("more"), []byte("last")})
	require.Eventually(t, func() bool { return transfers.Load() == 1 }, 10*time.Second, 5*time.Millisecond)

	// Once fetched, the stranger still hears "unknown"; the consumer hears why.
	require.Equal(t, unknown, answer(t, addrOf(s), kindOpen, [tokenLen]byte{}, id, stranger))
	_, err = Fetch(context.Background(), addrOf(s), id, secret, newCollector(0).sink)
	requireKind(t, err, ErrUnknownHandoff)
	require.Contains(t, err.Error(), "already fetched")
	require.EqualValues(t, 1, transfers.Load(), "refused handshakes are not transfers")
}

// A passive observer of plain TCP who recorded a consumer's hello and proof cannot replay them: every
// connection is challenged with a fresh nonce. Nor can it join the transfer with the session token it saw.
func TestReplayedProof(t *testing.T) {
	s := newServer(t)
	id, secret := NewHandoffID(), NewSecret()
	p := NewStreamPayload(1, nil)
	require.NoError(t, s.Offer(id, secret, p))

	// The consumer's handshake, as an observer records it.
	c, err := net.Dial("tcp", addrOf(s))
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	h := (&hello{version: ProtocolVersion, kind: kindOpen, id: id}).appendTo(nil)
	_, err = c.Write(h)
	require.NoError(t, err)
	var b [replyLen]byte
	_, err = io.ReadFull(c, b[:])
	require.NoError(t, err)
	pr := proof(secret, [nonceLen]byte(b[12:28]), h)
	_, err = c.Write(pr[:])
	require.NoError(t, err)
	_, err = io.ReadFull(c, b[:])
	require.NoError(t, err)
	require.Equal(t, codeOK, b[6])
	token := [tokenLen]byte(b[12:28])

	// The observer replays the recorded bytes on a new connection, blindly.
	r, err := net.Dial("tcp", addrOf(s))
	require.NoError(t, err)
	defer r.Close()
	r.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = r.Write(append(append([]byte(nil), h...), pr[:]...))
	require.NoError(t, err)
	all, err := io.ReadAll(r)
	require.NoError(t, err)
	require.Len(t, all, 2*replyLen+len(msgDenied))
	require.NotEqual(t, b[12:28], all[12:28], "the new connection's nonce is fresh")
	require.Equal(t, codeUnknown, all[replyLen+6])
	require.Equal(t, msgDenied, string(all[2*replyLen:]))

	// Or joins with the token it saw, without the secret.
	got := answer(t, addrOf(s), kindJoin, token, id, NewSecret())
	require.Equal(t, codeUnknown, got[6])
	// The consumer itself may join (a second connection of its transfer).
	require.Equal(t, codeOK, answer(t, addrOf(s), kindJoin, token, id, secret)[6])
}

func TestSecretArguments(t *testing.T) {
	s := newServer(t)
	for _, n := range []int{0, MinSecretLen - 1, MaxSecretLen + 1} {
		require.ErrorIs(t, s.Offer(NewHandoffID(), make([]byte, n), NewBytesPayload(nil, nil)), ErrOption)
		_, err := Fetch(context.Background(), addrOf(s), "x", make([]byte, n), newCollector(0).sink)
		require.ErrorIs(t, err, ErrOption)
	}
	require.Len(t, NewSecret(), 32)
	require.NotEqual(t, NewSecret(), NewSecret())
	// Offer copies the secret: changing the caller's slice afterwards changes nothing.
	id, secret := NewHandoffID(), NewSecret()
	mine := append([]byte(nil), secret...)
	require.NoError(t, s.Offer(id, secret, NewBytesPayload([][]byte{{1}}, nil)))
	secret[0] ^= 0xFF
	_, err := Fetch(context.Background(), addrOf(s), id, mine, newCollector(0).sink)
	require.NoError(t, err)
}

// tlsPair is a producer and a consumer side of mutual TLS from one CA.
func tlsOpts(t *testing.T, ca *testpki.CA, name string) Option {
	pair := ca.Issue(name)
	return WithTLSFiles(ca.CAFile, pair.CertFile, pair.KeyFile)
}

func TestTLS(t *testing.T) {
	ca := testpki.NewCA(t, "cluster")
	s := newServer(t, tlsOpts(t, ca, "prefill-0"))
	consumer := tlsOpts(t, ca, "decode-0")
	offer := func() (string, []byte, [][]byte) {
		id, secret := NewHandoffID(), NewSecret()
		chunks := makeChunks(40, 0, 300<<10, 5)
		require.NoError(t, s.Offer(id, secret, NewBytesPayload(chunks, nil)))
		return id, secret, chunks
	}

	t.Run("round trip", func(t *testing.T) {
		for _, conns := range []int{1, 4} {
			id, secret, chunks := offer()
			col := newCollector(0)
			st, err := Fetch(context.Background(), addrOf(s), id, secret, col.sink, consumer, WithConns(conns))
			require.NoError(t, err)
			col.requireEqual(t, chunks)
			require.Equal(t, len(chunks), st.Chunks)
		}
	})
	t.Run("server name", func(t *testing.T) {
		id, secret, _ := offer()
		_, err := Fetch(context.Background(), addrOf(s), id, secret, newCollector(0).sink, consumer, WithTLSServerName("prefill-0"))
		require.NoError(t, err, "the certificate names prefill-0")
		_, err = Fetch(context.Background(), addrOf(s), id, secret, newCollector(0).sink, consumer, WithTLSServerName("prefill-9"))
		requireKind(t, err, ErrTLS)
	})
	t.Run("consumer does not trust the producer", func(t *testing.T) {
		id, secret, _ := offer()
		other := testpki.NewCA(t, "other")
		_, err := Fetch(context.Background(), addrOf(s), id, secret, newCollector(0).sink, tlsOpts(t, other, "decode-0"))
		requireKind(t, err, ErrTLS)
		// The handoff is untouched: the right consumer fetches it.
		_, err = Fetch(context.Background(), addrOf(s), id, secret, newCollector(0).sink, consumer)
		require.NoError(t, err)
	})
	t.Run("producer does not trust the consumer", func(t *testing.T) {
		// The consumer trusts the cluster CA, but its certificate comes from another.
		id, secret, _ := offer()
		other := testpki.NewCA(t, "other")
		pair := other.Issue("decode-0")
		_, err := Fetch(context.Background(), addrOf(s), id, secret, newCollector(0).sink,
			WithTLSFiles(ca.CAFile, pair.CertFile, pair.KeyFile))
		requireKind(t, err, ErrTLS)
		_, err = Fetch(context.Background(), addrOf(s), id, secret, newCollector(0).sink, consumer)
		require.NoError(t, err)
	})
	t.Run("plain consumer", func(t *testing.T) {
		id, secret, _ := offer()
		pending := s.Pending()
		_, err := Fetch(context.Background(), addrOf(s), id, secret, newCollector(0).sink)
		requireKind(t, err, ErrTLS)
		require.Contains(t, err.Error(), "TLS only")
		require.Equal(t, pending, s.Pending())
		_, err = Fetch(context.Background(), addrOf(s), id, secret, newCollector(0).sink, consumer)
		require.NoError(t, err)
	})
	t.Run("plain producer", func(t *testing.T) {
		plain := newServer(t)
		id, secret := NewHandoffID(), NewSecret()
		require.NoError(t, plain.Offer(id, secret, NewBytesPayload([][]byte{{1}}, nil)))
		_, err := Fetch(context.Background(), addrOf(plain), id, secret, newCollector(0).sink, consumer, WithIOTimeout(2*time.Second))
		requireKind(t, err, ErrTLS)
	})
	t.Run("options", func(t *testing.T) {
		pair := ca.Issue("x")
		for _, o := range []Option{
			WithTLSFiles("", pair.CertFile, pair.KeyFile),
			WithTLSFiles(ca.CAFile, "", pair.KeyFile),
			WithTLSFiles(ca.CAFile, pair.CertFile, ""),
			WithTLSFiles(pair.KeyFile, pair.CertFile, pair.KeyFile), // a key is not a CA certificate
			WithTLSFiles(ca.CAFile, pair.CertFile, ca.CAFile),
			WithTLSFiles(ca.CAFile+".missing", pair.CertFile, pair.KeyFile),
			WithTLSConfig(nil),
			WithTLSServerName(""),
		} {
			_, err := Listen("127.0.0.1:0", o)
			require.ErrorIs(t, err, ErrOption)
		}
	})
}
