package transport

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// maxTombstones bounds the memory of recently retired ids, kept only to tell
// a consumer "expired" or "already fetched" instead of "unknown".
const maxTombstones = 4096

// errSuperseded ends a transfer when its consumer opens a new one.
var errSuperseded = errors.New("splitzip/transport: superseded by a newer fetch")

// unpacedWrite is the write size of chunk data the server need neither
// checksum nor pace.
const unpacedWrite = 1 << 20

// busySlack is how many connections beyond MaxConns are still read and
// answered "busy"; further ones are closed at once.
const busySlack = 64

// Server is the producer side: it listens for consumers and serves the
// payloads offered to it. It is safe for concurrent use.
type Server struct {
	o     Options
	ln    net.Listener
	pacer *pacer
	// dummy is the key proofs are checked against for ids the server does
	// not know, so that an unknown id costs the same work as a wrong proof.
	dummy [32]byte

	mu        sync.Mutex
	closed    bool
	handoffs  map[string]*handoff
	tombs     map[string]tomb
	tombRing  []string
	tombHead  int
	conns     map[net.Conn]struct{}
	transfers int

	wg sync.WaitGroup
}

type tomb struct {
	code   byte
	detail string
	secret []byte // a consumer that proves it learns why the id is gone
}

type handoff struct {
	id     string
	secret []byte
	p      Payload
	n      int
	timer  *time.Timer

	// guarded by Server.mu
	sess    *session // current transfer, nil if none
	live    int      // sessions with connections left (a superseded one may linger)
	gone    bool     // removed from the map; release once live is 0
	goneErr error    // release cause

	releaseOnce sync.Once
}

func (h *handoff) release(err error) { h.releaseOnce.Do(func() { h.p.Release(err) }) }

type session struct {
	h      *handoff
	token  [tokenLen]byte
	ctx    context.Context
	cancel context.CancelCauseFunc
	start  time.Time

	// guarded by Server.mu
	conns    int
	used     int
	finished bool // FIN received
	slot     bool // holds one of MaxTransfers

	bytes  atomic.Int64
	chunks atomic.Int64
}

// Listen starts a Server on addr ("host:port"; port 0 picks a free one).
func Listen(addr string, opts ...Option) (*Server, error) {
	o, err := buildOptions(opts)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("splitzip/transport: listen %s: %w", addr, err)
	}
	s := &Server{
		o:        o,
		ln:       ln,
		pacer:    newPacer(o.RateLimit),
		handoffs: make(map[string]*handoff),
		tombs:    make(map[string]tomb),
		tombRing: make([]string, 0, maxTombstones),
		conns:    make(map[net.Conn]struct{}),
	}
	rand.Read(s.dummy[:])
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

// Addr returns the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Offer registers p under id until it is fetched, withdrawn, expires
// (Options.HandoffTTL) or the server closes; p.Release is called exactly once
// in each case. Only a consumer that proves it holds secret (NewSecret; 16 to
// 64 bytes, copied) can fetch it; anyone else, id or not, is told the
// handoff does not exist. Offer fails if id is empty, longer than 255 bytes,
// already offered, the secret's length is out of range, p has more than
// MaxChunks chunks, or the server is closed.
func (s *Server) Offer(id string, secret []byte, p Payload) error {
	if len(id) == 0 || len(id) > maxIDLen {
		return fmt.Errorf("%w: offer: handoff id length %d not in 1..%d", ErrOption, len(id), maxIDLen)
	}
	if err := checkSecret(secret); err != nil {
		return fmt.Errorf("offer: %w", err)
	}
	n := p.NumChunks()
	if n < 0 || n > s.o.MaxChunks {
		return newError(ErrTooLarge, id, -1, fmt.Sprintf("offer: %d chunks, limit %d", n, s.o.MaxChunks), nil)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if _, ok := s.handoffs[id]; ok {
		return fmt.Errorf("%w: offer: handoff %s already offered", ErrOption, shortID(id))
	}
	h := &handoff{id: id, secret: append([]byte(nil), secret...), p: p, n: n}
	h.timer = time.AfterFunc(s.o.HandoffTTL, func() { s.retire(h, ErrExpired, codeExpired, "handoff expired") })
	s.handoffs[id] = h
	delete(s.tombs, id)
	return nil
}

// Withdraw removes a handoff; a transfer in progress is aborted (the consumer
// sees ErrUnknownHandoff) and the payload is released with ErrWithdrawn. It
// reports whether the id was offered.
func (s *Server) Withdraw(id string) bool {
	s.mu.Lock()
	h := s.handoffs[id]
	s.mu.Unlock()
	if h == nil {
		return false
	}
	s.retire(h, ErrWithdrawn, codeUnknown, "handoff withdrawn by producer")
	return true
}

// Pending returns the number of handoffs offered and not yet retired.
func (s *Server) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.handoffs)
}

// Close stops the server: it stops accepting, aborts transfers in progress,
// releases every payload with ErrClosed and waits until all its goroutines
// have returned. It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.wg.Wait()
		return nil
	}
	s.closed = true
	hs := make([]*handoff, 0, len(s.handoffs))
	for _, h := range s.handoffs {
		hs = append(hs, h)
	}
	s.mu.Unlock()
	err := s.ln.Close()
	for _, h := range hs {
		s.retire(h, ErrClosed, codeClosing, "producer shutting down")
	}
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

// retire removes h from the map; its payload is released now, or when the
// transfer in progress (which is aborted with cause) has ended.
func (s *Server) retire(h *handoff, cause error, code byte, detail string) {
	s.mu.Lock()
	if h.gone {
		s.mu.Unlock()
		return
	}
	s.removeLocked(h, cause, code, detail)
	sess, release := h.sess, h.live == 0
	s.mu.Unlock()
	if sess != nil {
		sess.cancel(cause)
	}
	if release {
		h.release(cause)
	}
}

func (s *Server) removeLocked(h *handoff, cause error, code byte, detail string) {
	h.gone, h.goneErr = true, cause
	h.timer.Stop()
	delete(s.handoffs, h.id)
	if len(s.tombRing) < maxTombstones {
		s.tombRing = append(s.tombRing, h.id)
	} else {
		delete(s.tombs, s.tombRing[s.tombHead])
		s.tombRing[s.tombHead] = h.id
		s.tombHead = (s.tombHead + 1) % maxTombstones
	}
	s.tombs[h.id] = tomb{code: code, detail: detail, secret: h.secret}
}

func (s *Server) acceptLoop() {
	defer s.wg.Done()
	backoff := time.Duration(0)
	for {
		c, err := s.ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and friends: back off instead of spinning.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		s.mu.Lock()
		if s.closed || len(s.conns) >= s.o.MaxConns+busySlack {
			s.mu.Unlock()
			c.Close()
			continue
		}
		over := len(s.conns) >= s.o.MaxConns
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(c, over)
	}
}

var readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 256) }}

// sconn is one server-side connection.
type sconn struct {
	s       *Server
	c       net.Conn // the TCP connection, or TLS over it
	br      *bufio.Reader
	hdr     [frameLen]byte
	trailer [trailerLen]byte
	arr     [3][]byte // backing array for bufs
	bufs    net.Buffers
	tlsOut  *coalescer // TLS: collects the records of one write into one syscall
}

func (s *Server) serveConn(c net.Conn, over bool) {
	br := readerPool.Get().(*bufio.Reader)
	sc := &sconn{s: s, c: c, br: br}
	defer func() {
		sc.c.Close()
		br.Reset(nil)
		readerPool.Put(br)
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		s.wg.Done()
	}()
	tuneConn(c, s.o.SocketBuffer)
	if s.o.TLS != nil && !sc.startTLS() {
		return
	}
	br.Reset(sc.c)
	sess := sc.handshake(over)
	if sess == nil {
		return
	}
	defer s.leave(sess)
	sc.serve(sess)
}

// tlsRecordHandshake is the first byte of a TLS client hello.
const tlsRecordHandshake = 0x16

// startTLS runs the server side of the TLS handshake. A consumer that speaks
// the plain protocol to a TLS producer is told so in the plain protocol.
func (sc *sconn) startTLS() bool {
	s := sc.s
	var first [1]byte
	sc.c.SetDeadline(time.Now().Add(s.o.IOTimeout))
	if _, err := io.ReadFull(sc.c, first[:]); err != nil {
		return false
	}
	pc := &prefixConn{Conn: sc.c, pre: first[:]}
	if first[0] != tlsRecordHandshake {
		if first[0] == magic[0] {
			sc.c = pc
			sc.br.Reset(pc)
			sc.reject(codeTLS, "the producer serves TLS only: give this consumer the TLS options too")
		}
		return false
	}
	out := &coalescer{Conn: pc}
	tc := tls.Server(out, s.o.TLS)
	sc.c = tc
	if err := tc.Handshake(); err != nil { // bounded by the deadline above
		return false
	}
	sc.c.SetDeadline(time.Time{})
	out.on = true
	sc.tlsOut = out
	return true
}

// coalescer gathers what TLS writes to the connection (a record of at most
// 16 KiB per Write call) until flush, so that a 256 KiB slice of a chunk
// costs one syscall instead of sixteen: copying the records once is cheaper
// than the calls. Off during the handshake, which flushes by itself.
type coalescer struct {
	net.Conn
	on  bool
	buf []byte
}

func (c *coalescer) Write(b []byte) (int, error) {
	if !c.on {
		return c.Conn.Write(b)
	}
	c.buf = append(c.buf, b...)
	return len(b), nil
}

func (c *coalescer) flush() error {
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	if cap(c.buf) > 2*unpacedWrite {
		c.buf = nil // a one-off large write: do not keep its buffer
	} else {
		c.buf = c.buf[:0]
	}
	return err
}

// prefixConn returns bytes already read before reading from Conn.
type prefixConn struct {
	net.Conn
	pre []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.pre) > 0 {
		n := copy(b, p.pre)
		p.pre = p.pre[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

func (p *prefixConn) CloseWrite() error {
	if cw, ok := p.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// msgDenied answers an unknown id and a wrong proof alike.
const msgDenied = "no such handoff, or this consumer does not hold its secret"

// handshake reads the hello, challenges the consumer to prove that it holds
// the handoff's secret, and answers; it returns the session joined, or nil
// after answering with an error. Nothing the producer says before the proof
// depends on the id: a consumer without the secret gets the answer an
// unknown id gets, after the same work.
func (sc *sconn) handshake(over bool) *session {
	s := sc.s
	var b [helloFixedLen + maxIDLen]byte
	sc.c.SetReadDeadline(time.Now().Add(s.o.IOTimeout))
	if _, err := io.ReadFull(sc.br, b[:6]); err != nil || [4]byte(b[:4]) != magic {
		return nil // not a consumer of ours: say nothing
	}
	if v := uint16(b[4])<<8 | uint16(b[5]); v != s.o.version {
		msg := fmt.Sprintf("producer speaks protocol version %d, consumer %d", s.o.version, v)
		if v < 2 {
			msg += " (version 2 authenticates fetches; upgrade the consumer)"
		}
		sc.reject(codeVersion, msg)
		return nil
	}
	if _, err := io.ReadFull(sc.br, b[6:helloFixedLen]); err != nil {
		return nil
	}
	kind, idLen := b[6], int(b[7])
	token := [tokenLen]byte(b[8:helloFixedLen])
	if idLen == 0 || (kind != kindOpen && kind != kindJoin) {
		sc.reject(codeProtocol, fmt.Sprintf("bad hello: kind %d, id length %d", kind, idLen))
		return nil
	}
	if _, err := io.ReadFull(sc.br, b[helloFixedLen:helloFixedLen+idLen]); err != nil {
		return nil
	}
	helloBytes := b[:helloFixedLen+idLen]
	id := string(b[helloFixedLen : helloFixedLen+idLen])
	if over {
		sc.reject(codeBusy, fmt.Sprintf("producer at its limit of %d connections", s.o.MaxConns))
		return nil
	}

	// Challenge, whatever the id.
	var nonce [nonceLen]byte
	rand.Read(nonce[:])
	var rb [replyLen]byte
	ch := reply{version: s.o.version, status: statusChallenge, token: nonce}
	if sc.write(ch.appendTo(rb[:0])) != nil {
		return nil
	}
	var got [proofLen]byte
	sc.c.SetReadDeadline(time.Now().Add(s.o.IOTimeout))
	if _, err := io.ReadFull(sc.br, got[:]); err != nil {
		return nil
	}
	s.mu.Lock()
	key, known := s.dummy[:], false
	if h := s.handoffs[id]; h != nil {
		key, known = h.secret, true
	} else if t, ok := s.tombs[id]; ok {
		key, known = t.secret, true
	}
	s.mu.Unlock()
	want := proof(key, nonce, helloBytes)
	if !hmac.Equal(want[:], got[:]) || !known {
		sc.reject(codeUnknown, msgDenied)
		return nil
	}

	s.mu.Lock()
	h := s.handoffs[id]
	var (
		sess       *session
		superseded *session
		code       byte
		msg        string
	)
	// A new OPEN supersedes a transfer of the same handoff in progress: only
	// the consumer holding the secret gets here, so this is that consumer
	// retrying after a failure the producer may not have noticed yet.
	inUse := 0
	if h != nil && h.sess != nil && h.sess.slot {
		inUse = 1
	}
	switch {
	case s.closed:
		code, msg = codeClosing, "producer shutting down"
	case h == nil:
		code, msg = codeUnknown, "no such handoff"
		if t, ok := s.tombs[id]; ok {
			code, msg = t.code, t.detail
		}
	case kind == kindOpen && s.transfers-inUse >= s.o.MaxTransfers:
		code, msg = codeBusy, fmt.Sprintf("producer at its limit of %d transfers", s.o.MaxTransfers)
	case kind == kindOpen:
		if superseded = h.sess; superseded != nil {
			s.freeSlotLocked(superseded)
		}
		sess = &session{h: h, start: time.Now(), slot: true}
		rand.Read(sess.token[:])
		sess.ctx, sess.cancel = context.WithCancelCause(context.Background())
		h.sess = sess
		h.live++
		s.transfers++
	case h.sess == nil || h.sess.token != token || h.sess.finished:
		code, msg = codeUnknown, "no transfer in progress for this token"
	case h.sess.conns >= 64:
		code, msg = codeBusy, "too many connections for one transfer"
	default:
		sess = h.sess
	}
	if sess != nil {
		sess.conns++
		sess.used++
	}
	s.mu.Unlock()
	if superseded != nil {
		superseded.cancel(errSuperseded)
	}
	if sess == nil {
		sc.reject(code, msg)
		return nil
	}
	r := reply{version: s.o.version, status: codeOK, numChunks: uint32(h.n), token: sess.token}
	if err := sc.write(r.appendTo(rb[:0])); err != nil {
		s.leave(sess)
		return nil
	}
	return sess
}

func (sc *sconn) reject(code byte, msg string) {
	var b [replyLen + maxMsgLen]byte
	r := reply{version: sc.s.o.version, status: code, msg: msg}
	sc.write(r.appendTo(b[:0]))
	// Half-close and give the peer a moment to read, so that the reply is
	// not lost to a reset caused by unread input.
	if cw, ok := sc.c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		sc.c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		io.Copy(io.Discard, io.LimitReader(sc.br, 64<<10))
	}
}

func (sc *sconn) write(b []byte) error {
	sc.c.SetWriteDeadline(time.Now().Add(sc.s.o.IOTimeout))
	if _, err := sc.c.Write(b); err != nil {
		return err
	}
	return sc.flush()
}

// writeBufs writes sc.bufs (with one writev on plain TCP).
func (sc *sconn) writeBufs() error {
	sc.c.SetWriteDeadline(time.Now().Add(sc.s.o.IOTimeout))
	if _, err := sc.bufs.WriteTo(sc.c); err != nil {
		return err
	}
	return sc.flush()
}

func (sc *sconn) flush() error {
	if sc.tlsOut == nil {
		return nil
	}
	return sc.tlsOut.flush()
}

// serve answers requests until the consumer finishes or fails.
func (sc *sconn) serve(sess *session) {
	s, h := sc.s, sess.h
	var req [reqLen]byte
	for {
		sc.c.SetReadDeadline(time.Now().Add(s.o.IOTimeout))
		if _, err := io.ReadFull(sc.br, req[:]); err != nil {
			return // consumer done with this connection, gone, or idle too long
		}
		idx := uint32(req[4])<<24 | uint32(req[5])<<16 | uint32(req[6])<<8 | uint32(req[7])
		switch req[0] {
		case reqGet:
			if idx >= uint32(h.n) {
				sc.sendError(codeProtocol, idx, fmt.Sprintf("chunk %d requested, handoff has %d", idx, h.n))
				return
			}
			if !sc.sendChunk(sess, int(idx)) {
				return
			}
		case reqFin:
			s.mu.Lock()
			if !h.gone && h.sess == sess {
				// The transfer slot frees now, so that a consumer whose Fetch
				// returned can start another at once; the payload is released
				// when the last connection of the session has gone.
				sess.finished = true
				s.freeSlotLocked(sess)
				s.removeLocked(h, nil, codeUnknown, "handoff already fetched")
			}
			finished := sess.finished
			s.mu.Unlock()
			if !finished { // expired or withdrawn at the last moment
				sc.sendSessionError(sess, noChunk)
				return
			}
			f := frame{typ: frameFinAck, index: noChunk}
			f.put(sc.hdr[:])
			sc.write(sc.hdr[:])
			return
		default:
			sc.sendError(codeProtocol, noChunk, fmt.Sprintf("unknown request type %d", req[0]))
			return
		}
	}
}

// sendChunk waits for chunk i, sending keepalives meanwhile, and writes it.
func (sc *sconn) sendChunk(sess *session, i int) bool {
	s := sc.s
	ka := s.o.IOTimeout / 4
	if sess.ctx.Err() != nil { // expired, withdrawn, superseded, closing
		sc.sendSessionError(sess, uint32(i))
		return false
	}
	data, ready := readyChunk(sess.h.p, i)
	for !ready {
		ctx, cancel := context.WithTimeout(sess.ctx, ka)
		d, err := sess.h.p.Chunk(ctx, i)
		cancel()
		if err == nil {
			data = d
			break
		}
		if sess.ctx.Err() != nil {
			sc.sendSessionError(sess, uint32(i))
			return false
		}
		if errors.Is(err, context.DeadlineExceeded) {
			f := frame{typ: frameKeepalive, index: uint32(i)}
			f.put(sc.hdr[:])
			if sc.write(sc.hdr[:]) != nil {
				return false
			}
			continue
		}
		sc.sendError(codeProducer, uint32(i), err.Error())
		return false
	}
	if len(data) > s.o.MaxChunkSize {
		sc.sendError(codeTooLarge, uint32(i), fmt.Sprintf("chunk of %d bytes exceeds the producer's limit of %d", len(data), s.o.MaxChunkSize))
		return false
	}
	f := frame{typ: frameChunk, index: uint32(i), length: uint32(len(data))}
	f.put(sc.hdr[:])
	slice := s.pacer.slice()
	var crc uint32
	known := false
	if cs, ok := sess.h.p.(ChunkChecksummer); ok {
		crc, known = cs.ChunkCRC(i)
	}
	if known && s.pacer == nil {
		// Nothing to checksum while in cache and nothing to pace: larger writes, fewer syscalls.
		slice = unpacedWrite
	}
	for off := 0; ; {
		k := min(slice, len(data)-off)
		piece := data[off : off+k]
		if !known {
			crc = crcUpdate(crc, piece)
		}
		sc.bufs = net.Buffers(sc.arr[:0])
		if off == 0 {
			sc.bufs = append(sc.bufs, sc.hdr[:])
		}
		sc.bufs = append(sc.bufs, piece)
		off += k
		last := off == len(data)
		if last {
			binary.BigEndian.PutUint32(sc.trailer[:], crc)
			sc.bufs = append(sc.bufs, sc.trailer[:])
		}
		if err := s.pacer.wait(sess.ctx, k); err != nil {
			sc.sendSessionError(sess, uint32(i))
			return false
		}
		if err := sc.writeBufs(); err != nil {
			return false
		}
		if last {
			break
		}
	}
	sess.bytes.Add(int64(f.length))
	sess.chunks.Add(1)
	return true
}

func (sc *sconn) sendSessionError(sess *session, idx uint32) {
	cause := context.Cause(sess.ctx)
	switch {
	case errors.Is(cause, ErrExpired):
		sc.sendError(codeExpired, idx, "handoff expired during transfer")
	case errors.Is(cause, ErrWithdrawn):
		sc.sendError(codeUnknown, idx, "handoff withdrawn by producer")
	case errors.Is(cause, errSuperseded):
		sc.sendError(codeBusy, idx, "superseded by a newer fetch of this handoff")
	default:
		sc.sendError(codeClosing, idx, "producer shutting down")
	}
}

func (sc *sconn) sendError(code byte, idx uint32, msg string) {
	if len(msg) > maxMsgLen {
		msg = msg[:maxMsgLen]
	}
	f := frame{typ: frameError, code: code, index: idx, length: uint32(len(msg))}
	f.put(sc.hdr[:])
	sc.bufs = append(net.Buffers(sc.arr[:0]), sc.hdr[:], []byte(msg))
	sc.writeBufs()
}

// freeSlotLocked gives back the transfer slot sess holds, if any.
func (s *Server) freeSlotLocked(sess *session) {
	if sess.slot {
		sess.slot = false
		s.transfers--
	}
}

// leave drops one connection from its session; the last one ends the
// transfer.
func (s *Server) leave(sess *session) {
	h := sess.h
	s.mu.Lock()
	sess.conns--
	if sess.conns > 0 {
		s.mu.Unlock()
		return
	}
	s.freeSlotLocked(sess)
	if h.sess == sess {
		h.sess = nil
	}
	h.live--
	finished, release, goneErr, used := sess.finished, h.gone && h.live == 0, h.goneErr, sess.used
	s.mu.Unlock()
	var err error
	if !finished {
		err = context.Cause(sess.ctx)
		if err == nil {
			err = newError(ErrPeerClosed, h.id, -1, "consumer left before the transfer completed", nil)
		}
	}
	sess.cancel(err)
	if s.o.OnTransfer != nil {
		s.o.OnTransfer(Stats{
			ID:       h.id,
			Bytes:    sess.bytes.Load(),
			Chunks:   int(sess.chunks.Load()),
			Conns:    used,
			Duration: time.Since(sess.start),
			Err:      err,
		})
	}
	if release {
		h.release(goneErr)
	}
}

// tuneConn applies socket options. Go enables TCP_NODELAY by default; it is
// set again to be explicit.
func tuneConn(c net.Conn, buf int) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	tc.SetNoDelay(true)
	if buf > 0 {
		tc.SetReadBuffer(buf)
		tc.SetWriteBuffer(buf)
	}
}
