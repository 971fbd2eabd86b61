package transport

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Sink receives verified chunks during a Fetch. It is called once per chunk
// index, in no particular order (chunks arrive out of order across
// connections), and concurrently from up to Options.Conns goroutines, while
// later chunks are still being received. data is only valid during the call:
// the buffer is reused afterwards, so copy or decode it before returning.
// An error aborts the transfer. A sink call that takes longer than
// Options.IOTimeout stalls its connection long enough for the producer to
// drop it.
type Sink func(i int, data []byte) error

// errNotNeeded: an extra connection was not opened because the work queue
// ran dry first.
var errNotNeeded = errors.New("splitzip/transport: connection not needed")

// aLongTimeAgo is a deadline in the past, used to interrupt blocked I/O.
var aLongTimeAgo = time.Unix(1, 0)

// Fetch retrieves the handoff id from the producer at addr, proving on every
// connection that it holds the handoff's secret (the one given to Offer),
// and hands every chunk to sink as soon as it is received and verified. It returns nil only
// after every chunk was accepted by sink and the producer acknowledged the
// end of the transfer (the producer has then released the payload). On error
// (wrapping one of the package's sentinels; see [Error]) some chunks may
// already have been given to sink: the caller must treat the whole request as
// failed. Fetch may be retried while the handoff lives.
func Fetch(ctx context.Context, addr, id string, secret []byte, sink Sink, opts ...Option) (Stats, error) {
	if sink == nil {
		return Stats{}, fmt.Errorf("%w: fetch: nil sink", ErrOption)
	}
	return FetchCRC(ctx, addr, id, secret, func(i int, data []byte, _ uint32) error { return sink(i, data) }, opts...)
}

// SinkCRC is a Sink that also receives the chunk's CRC-32C, verified against the producer's: a consumer that
// checks frames against checksums published elsewhere need not compute them again.
type SinkCRC func(i int, data []byte, crc uint32) error

// FetchCRC is Fetch with a SinkCRC.
func FetchCRC(ctx context.Context, addr, id string, secret []byte, sink SinkCRC, opts ...Option) (Stats, error) {
	start := time.Now()
	o, err := buildOptions(opts)
	if err != nil {
		return Stats{}, err
	}
	if len(id) == 0 || len(id) > maxIDLen {
		return Stats{}, fmt.Errorf("%w: fetch: handoff id length %d not in 1..%d", ErrOption, len(id), maxIDLen)
	}
	if err := checkSecret(secret); err != nil {
		return Stats{}, fmt.Errorf("fetch: %w", err)
	}
	if sink == nil {
		return Stats{}, fmt.Errorf("%w: fetch: nil sink", ErrOption)
	}
	fctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	dctx, stopDials := context.WithCancel(fctx)
	defer stopDials()
	f := &fetch{o: o, addr: addr, id: id, secret: secret, sink: sink, pacer: newPacer(o.RateLimit),
		ctx: fctx, fail: cancel, stopDials: stopDials}

	primary, rep, err := f.dial(dctx, kindOpen, [tokenLen]byte{})
	if err != nil {
		return f.stats(start), err
	}
	defer primary.close()
	if int64(rep.numChunks) > int64(o.MaxChunks) {
		return f.stats(start), newError(ErrTooLarge, id, -1,
			fmt.Sprintf("handoff has %d chunks, limit %d", rep.numChunks, o.MaxChunks), nil)
	}
	f.n = int64(rep.numChunks)
	f.conns.Store(1)

	workers := int(min(int64(o.Conns), f.n))
	f.wg.Add(workers)
	if workers > 0 {
		go f.work(primary)
	}
	for k := 1; k < workers; k++ {
		go func() {
			c, _, err := f.dial(dctx, kindJoin, rep.token)
			if err != nil {
				// The other connections carry the work; a failed extra
				// connection only costs parallelism.
				f.wg.Done()
				return
			}
			f.conns.Add(1)
			defer c.close()
			f.work(c)
		}()
	}
	f.wg.Wait()
	if err := f.err(); err != nil {
		return f.stats(start), err
	}
	if got := f.delivered.Load(); got != f.n {
		return f.stats(start), newError(ErrProtocol, id, -1, fmt.Sprintf("%d of %d chunks delivered", got, f.n), nil)
	}
	if err := f.finish(primary); err != nil {
		f.fail(err)
		return f.stats(start), f.err()
	}
	return f.stats(start), nil
}

type fetch struct {
	o         Options
	addr, id  string
	secret    []byte
	sink      SinkCRC
	pacer     *pacer
	ctx       context.Context
	fail      context.CancelCauseFunc
	stopDials context.CancelFunc
	n         int64

	next      atomic.Int64
	delivered atomic.Int64
	bytes     atomic.Int64
	conns     atomic.Int32
	wg        sync.WaitGroup
}

func (f *fetch) err() error {
	if f.ctx.Err() == nil {
		return nil
	}
	cause := context.Cause(f.ctx)
	if _, ok := cause.(*Error); !ok {
		// the caller's context ended
		return newError(cause, f.id, -1, "fetch interrupted", nil)
	}
	return cause
}

func (f *fetch) stats(start time.Time) Stats {
	return Stats{
		ID:       f.id,
		Bytes:    f.bytes.Load(),
		Chunks:   int(f.delivered.Load()),
		Conns:    int(f.conns.Load()),
		Duration: time.Since(start),
	}
}

// cconn is one consumer-side connection.
type cconn struct {
	net.Conn
	br   *bufio.Reader
	stop func() bool
}

func (c *cconn) close() {
	c.stop()
	c.Conn.Close()
	c.br.Reset(nil)
	clientReaders.Put(c.br)
}

var clientReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}

// dial connects and performs the handshake: TLS if configured, the hello,
// the proof of the secret, the producer's answer.
func (f *fetch) dial(ctx context.Context, kind byte, token [tokenLen]byte) (*cconn, reply, error) {
	var rep reply
	d := net.Dialer{Timeout: f.o.IOTimeout}
	nc, err := d.DialContext(ctx, "tcp", f.addr)
	if err != nil {
		if err := f.err(); err != nil {
			return nil, rep, err
		}
		if ctx.Err() != nil {
			return nil, rep, errNotNeeded
		}
		return nil, rep, newError(ErrUnreachable, f.id, -1, "dial "+f.addr, err)
	}
	tuneConn(nc, f.o.SocketBuffer)
	br := clientReaders.Get().(*bufio.Reader)
	c := &cconn{Conn: nc, br: br}
	// Any failure of the fetch interrupts blocked I/O on every connection.
	c.stop = context.AfterFunc(f.ctx, func() { nc.SetDeadline(aLongTimeAgo) })
	fail := func(kind error, detail string, cause error) (*cconn, reply, error) {
		c.close()
		if f.ctx.Err() != nil {
			return nil, rep, f.err()
		}
		return nil, rep, newError(kind, f.id, -1, detail, cause)
	}
	c.SetDeadline(time.Now().Add(f.o.IOTimeout))
	if f.o.TLS != nil {
		cfg := f.o.TLS.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName = f.o.TLSServerName
		}
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(f.addr)
		}
		tc := tls.Client(nc, cfg)
		c.Conn = tc
		if err := tc.HandshakeContext(ctx); err != nil {
			detail := "with " + f.addr
			if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
				detail += " (does the producer serve TLS, and trust this consumer's certificate?)"
			}
			return fail(ErrTLS, detail, err)
		}
	}
	br.Reset(c.Conn)

	var b [replyLen + maxMsgLen]byte
	h := hello{version: f.o.version, kind: kind, token: token, id: f.id}
	helloBytes := h.appendTo(make([]byte, 0, helloFixedLen+len(f.id)))
	if _, err := c.Write(helloBytes); err != nil {
		return fail(ioKind(err), "sending hello", err)
	}
	ch, msg, err := f.readReply(c, b[:])
	if err != nil {
		c.close()
		return nil, rep, err
	}
	if ch.status != statusChallenge {
		if ch.status == codeOK {
			return fail(ErrProtocol, "the producer did not challenge this consumer", nil)
		}
		return fail(codeKind(ch.status), "producer: "+msg, nil)
	}
	p := proof(f.secret, [nonceLen]byte(ch.token), helloBytes)
	if _, err := c.Write(p[:]); err != nil {
		return fail(ioKind(err), "sending proof", err)
	}
	rep, msg, err = f.readReply(c, b[:])
	if err != nil {
		c.close()
		return nil, rep, err
	}
	if rep.status != codeOK {
		return fail(codeKind(rep.status), "producer: "+msg, nil)
	}
	c.SetDeadline(time.Time{})
	return c, rep, nil
}

// readReply reads one handshake reply into b and returns it with its
// message.
func (f *fetch) readReply(c *cconn, b []byte) (rep reply, msg string, err error) {
	fail := func(kind error, detail string, cause error) (reply, string, error) {
		if f.ctx.Err() != nil {
			return rep, "", f.err()
		}
		return rep, "", newError(kind, f.id, -1, detail, cause)
	}
	if _, err := io.ReadFull(c.br, b[:6]); err != nil {
		return fail(ioKind(err), "reading handshake reply", err)
	}
	if [4]byte(b[:4]) != magic {
		return fail(ErrProtocol, fmt.Sprintf("%s is not a splitzip transport peer (magic %q)", f.addr, b[:4]), nil)
	}
	rep.version = uint16(b[4])<<8 | uint16(b[5])
	if rep.version != f.o.version {
		detail := fmt.Sprintf("producer speaks protocol version %d, consumer %d", rep.version, f.o.version)
		if rep.version < 2 {
			detail += " (version 2 authenticates fetches; upgrade the producer)"
		}
		return fail(ErrIncompatibleVersion, detail, nil)
	}
	if _, err := io.ReadFull(c.br, b[6:replyLen]); err != nil {
		return fail(ioKind(err), "reading handshake reply", err)
	}
	rep.status = b[6]
	rep.numChunks = uint32(b[8])<<24 | uint32(b[9])<<16 | uint32(b[10])<<8 | uint32(b[11])
	rep.token = [tokenLen]byte(b[12:28])
	msgLen := int(b[28])<<8 | int(b[29])
	if msgLen > maxMsgLen {
		return fail(ErrProtocol, fmt.Sprintf("handshake message of %d bytes", msgLen), nil)
	}
	if _, err := io.ReadFull(c.br, b[replyLen:replyLen+msgLen]); err != nil {
		return fail(ioKind(err), "reading handshake reply", err)
	}
	return rep, string(b[replyLen : replyLen+msgLen]), nil
}

type item struct {
	i   int
	buf *[]byte
	crc uint32
}

// work pulls chunk indices from the shared queue and receives them on c,
// keeping Window requests in flight; a second goroutine hands the received
// chunks to the sink, so receiving and decoding overlap.
func (f *fetch) work(c *cconn) {
	defer f.wg.Done()
	ch := make(chan item, 1)
	done := make(chan struct{})
	go f.deliver(ch, done)
	defer func() {
		close(ch)
		<-done
	}()

	w := f.o.Window
	pending := make([]int, w) // ring of requested indices, in request order
	head, count := 0, 0
	var reqs [reqLen * 64]byte
	var hdr [frameLen]byte
	var trailer [trailerLen]byte
	slice := f.pacer.slice()
	for {
		m := 0
		for count < w {
			i := f.next.Add(1) - 1
			if i >= f.n {
				f.stopDials() // no work left for connections not yet open
				break
			}
			pending[(head+count)%w] = int(i)
			count++
			putRequest(reqs[m*reqLen:], reqGet, uint32(i))
			m++
		}
		if m > 0 {
			c.SetWriteDeadline(time.Now().Add(f.o.IOTimeout))
			if _, err := c.Write(reqs[:m*reqLen]); err != nil {
				f.ioFail(err, pending[head], "sending request")
				return
			}
		}
		if count == 0 {
			return
		}
		want := pending[head]
		c.SetReadDeadline(time.Now().Add(f.o.IOTimeout))
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			f.ioFail(err, want, fmt.Sprintf("waiting for chunk (%d requested on this connection)", count))
			return
		}
		var fr frame
		fr.parse(hdr[:])
		switch fr.typ {
		case frameKeepalive:
			continue
		case frameError:
			f.remoteError(c, fr, want)
			return
		case frameChunk:
		default:
			f.fail(newError(ErrProtocol, f.id, want, fmt.Sprintf("unexpected frame type 0x%02x", fr.typ), nil))
			return
		}
		if int(fr.index) != want {
			f.fail(newError(ErrProtocol, f.id, want, fmt.Sprintf("received chunk %d out of order", fr.index), nil))
			return
		}
		if int64(fr.length) > int64(f.o.MaxChunkSize) {
			f.fail(newError(ErrTooLarge, f.id, want, fmt.Sprintf("chunk of %d bytes exceeds the consumer's limit of %d", fr.length, f.o.MaxChunkSize), nil))
			return
		}
		buf := getBuf(int(fr.length))
		data := *buf
		var crc uint32
		for off := 0; off < len(data); {
			k := min(slice, len(data)-off)
			c.SetReadDeadline(time.Now().Add(f.o.IOTimeout))
			if _, err := io.ReadFull(c.br, data[off:off+k]); err != nil {
				putBuf(buf)
				f.ioFail(err, want, fmt.Sprintf("reading chunk data at byte %d of %d", off, len(data)))
				return
			}
			crc = crcUpdate(crc, data[off:off+k])
			if err := f.pacer.wait(f.ctx, k); err != nil {
				putBuf(buf)
				return
			}
			off += k
		}
		c.SetReadDeadline(time.Now().Add(f.o.IOTimeout))
		if _, err := io.ReadFull(c.br, trailer[:]); err != nil {
			putBuf(buf)
			f.ioFail(err, want, "reading chunk checksum")
			return
		}
		if sent := binary.BigEndian.Uint32(trailer[:]); crc != sent {
			putBuf(buf)
			f.fail(newError(ErrChecksum, f.id, want, fmt.Sprintf("crc32c of %d bytes is %08x, producer sent %08x", len(data), crc, sent), nil))
			return
		}
		select {
		case ch <- item{i: want, buf: buf, crc: crc}:
		case <-f.ctx.Done():
			putBuf(buf)
			return
		}
		head = (head + 1) % w
		count--
	}
}

func (f *fetch) deliver(ch <-chan item, done chan<- struct{}) {
	defer close(done)
	for it := range ch {
		if f.ctx.Err() == nil {
			if err := f.sink(it.i, *it.buf, it.crc); err != nil {
				f.fail(newError(ErrSink, f.id, it.i, "", err))
			} else {
				f.delivered.Add(1)
				f.bytes.Add(int64(len(*it.buf)))
			}
		}
		putBuf(it.buf)
	}
}

func (f *fetch) ioFail(err error, chunk int, detail string) {
	if f.ctx.Err() != nil {
		return // already failed or cancelled; this is a consequence
	}
	f.fail(newError(ioKind(err), f.id, chunk, detail, err))
}

// remoteError reads an error frame's message and fails the fetch with it.
func (f *fetch) remoteError(c *cconn, fr frame, want int) {
	chunk := -1
	if fr.index != noChunk {
		chunk = int(fr.index)
	}
	if fr.length > maxMsgLen {
		f.fail(newError(ErrProtocol, f.id, chunk, fmt.Sprintf("error message of %d bytes", fr.length), nil))
		return
	}
	msg := make([]byte, fr.length)
	c.SetReadDeadline(time.Now().Add(f.o.IOTimeout))
	if _, err := io.ReadFull(c.br, msg); err != nil {
		f.ioFail(err, want, "reading error message")
		return
	}
	f.fail(newError(codeKind(fr.code), f.id, chunk, "producer: "+string(msg), nil))
}

// finish tells the producer that every chunk was accepted and waits for its
// acknowledgement.
func (f *fetch) finish(c *cconn) error {
	var req [reqLen]byte
	putRequest(req[:], reqFin, 0)
	c.SetWriteDeadline(time.Now().Add(f.o.IOTimeout))
	if _, err := c.Write(req[:]); err != nil {
		return newError(ioKind(err), f.id, -1, "sending end of transfer", err)
	}
	var hdr [frameLen]byte
	for {
		c.SetReadDeadline(time.Now().Add(f.o.IOTimeout))
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			return newError(ioKind(err), f.id, -1, "waiting for end-of-transfer acknowledgement", err)
		}
		var fr frame
		fr.parse(hdr[:])
		switch fr.typ {
		case frameKeepalive:
			continue
		case frameFinAck:
			return nil
		case frameError:
			f.remoteError(c, fr, -1)
			return f.err()
		default:
			return newError(ErrProtocol, f.id, -1, fmt.Sprintf("unexpected frame type 0x%02x after end of transfer", fr.typ), nil)
		}
	}
}
