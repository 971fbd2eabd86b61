package nixl

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/crc32"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/splitzip/splitzip/connector/transport"
)

// Client is the consumer side: it reads handoffs' chunks from producers' registered memory with one-sided
// NIXL reads into its own registered memory, verifies each chunk's CRC-32C and hands it to a sink, then tells
// the producer it is done. It is safe for concurrent use; fetches share its receive memory.
type Client struct {
	o     Options
	ag    *Agent
	arena *Arena // host receive memory: chunk tables, and the chunks of Fetch
	unmap func() error
	dev   *deviceRecv // GPU receive memory (UseDeviceMemory): the chunks of FetchDevice

	mu     sync.Mutex
	peers  map[string][sha256.Size]byte // loaded producer agents → digest of the metadata loaded
	leaked atomic.Int64                 // receive bytes abandoned to reads that could not be cancelled
	closed bool
}

// NewClient creates the consumer's agent, named name (unique among the agents of the deployment), and
// registers its receive memory (Options.RecvBytes).
func NewClient(name string, opts ...Option) (*Client, error) {
	o, ag, err := newAgentWith(name, opts)
	if err != nil {
		return nil, err
	}
	mem, unmap, err := MapHost(o.RecvBytes)
	if err != nil {
		return nil, errors.Join(err, ag.Close())
	}
	c := &Client{o: o, ag: ag, arena: NewArena(mem), unmap: unmap, peers: map[string][sha256.Size]byte{}}
	if err := ag.Register(c.arena.Region()); err != nil {
		return nil, errors.Join(err, ag.Close(), unmap())
	}
	return c, nil
}

// Agent is the client's NIXL agent.
func (c *Client) Agent() *Agent { return c.ag }

// Leaked is the receive memory abandoned to reads that failed and could not be cancelled: it is never
// reused, so a late write cannot land in another fetch's chunk.
func (c *Client) Leaked() int64 { return c.leaked.Load() }

// peer loads the producer's metadata unless the same metadata is loaded already.
func (c *Client) peer(l Locator) error {
	sum := sha256.Sum256(l.Metadata)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	if have, ok := c.peers[l.Agent]; ok {
		if have == sum {
			return nil
		}
		// The producer registered other memory since: its new metadata replaces the old.
		_ = c.ag.ForgetRemote(l.Agent)
		delete(c.peers, l.Agent)
	}
	name, err := c.ag.LoadRemote(l.Metadata)
	if err != nil {
		return err
	}
	if name != l.Agent {
		_ = c.ag.ForgetRemote(name)
		return fmt.Errorf("%w: metadata of agent %q under the name %q", ErrLocator, name, l.Agent)
	}
	c.peers[l.Agent] = sum
	return nil
}

// forget drops a producer whose reads failed: it is gone, or will be reloaded from its next locator.
func (c *Client) forget(agent string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.peers[agent]; ok {
		_ = c.ag.ForgetRemote(agent)
		delete(c.peers, agent)
	}
}

// Fetch reads handoff id, which locator (Server.Locator, carried by the control plane) describes, handing
// every chunk to sink as soon as it is read and verified; sink may be called concurrently (Window
// goroutines), in no particular order, and its data is valid only during the call. Fetch returns nil only
// after every chunk was accepted by sink; then it tells the producer, which releases the payload. On error
// (wrapping a sentinel of connector/transport: ErrChecksum, ErrPeerClosed, ErrTimeout, ErrProducer,
// ErrExpired, ErrUnknownHandoff, ErrTooLarge, ErrSink) some chunks may have reached sink already: the
// caller must treat the whole request as failed.
func (c *Client) Fetch(ctx context.Context, locator []byte, id string, sink transport.SinkCRC) (transport.Stats, error) {
	if sink == nil {
		return transport.Stats{ID: id, Conns: 1}, fmt.Errorf("%w: nil sink", ErrOption)
	}
	return c.fetch(ctx, locator, id, receiver{
		arena:  c.arena,
		verify: func(p uintptr, n int) (uint32, error) { return crc32.Checksum(c.arena.bytesAt(p, n), castagnoli), nil },
		deliver: func(i int, p uintptr, n int, crc uint32) error {
			if n == 0 {
				return sink(i, nil, crc)
			}
			return sink(i, c.arena.bytesAt(p, n), crc)
		},
	})
}

// receiver is where a fetch reads chunks to, how it verifies them there, and whom it hands them to.
type receiver struct {
	arena   *Arena
	verify  func(p uintptr, n int) (uint32, error) // the CRC-32C of n bytes at p in arena
	deliver func(i int, p uintptr, n int, crc uint32) error
}

func (c *Client) fetch(ctx context.Context, locator []byte, id string, rcv receiver) (transport.Stats, error) {
	start := time.Now()
	st := transport.Stats{ID: id, Conns: 1}
	l, err := ParseLocator(locator)
	if err != nil {
		return st, err
	}
	if l.Chunks > c.o.MaxChunks {
		return st, ferr(transport.ErrTooLarge, id, -1, fmt.Sprintf("handoff has %d chunks, limit %d", l.Chunks, c.o.MaxChunks), nil)
	}
	if err := c.peer(l); err != nil {
		return st, ferr(transport.ErrUnreachable, id, -1, "loading the producer's NIXL metadata", err)
	}
	f := &fetch{c: c, l: l, id: id, rcv: rcv, entries: make([]entry, l.Chunks), known: make([]bool, l.Chunks)}
	fctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	f.ctx, f.fail = fctx, cancel
	err = f.run()
	st.Bytes, st.Chunks, st.Duration = f.bytes.Load(), int(f.delivered.Load()), time.Since(start)
	if err != nil {
		if errors.Is(err, transport.ErrPeerClosed) || errors.Is(err, transport.ErrTimeout) {
			c.forget(l.Agent)
		}
		return st, err
	}
	// The producer may release the payload now. A lost notice costs it only memory until the handoff expires.
	_ = c.ag.Notify(l.Agent, finNotice(id, st.Bytes, st.Duration))
	return st, nil
}

// Close destroys the agent and returns the receive memory; fetches must have returned.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	err := c.ag.Close()
	if c.leaked.Load() == 0 { // memory a read may still write stays mapped
		err = errors.Join(err, c.unmap())
	}
	return err
}

func ferr(kind error, id string, chunk int, detail string, cause error) error {
	return &transport.Error{Kind: kind, ID: shortID(id), Chunk: chunk, Detail: detail, Err: cause}
}

// fetch is one Fetch's state, driven by one goroutine (run) with Window sink goroutines beside it.
type fetch struct {
	c    *Client
	l    Locator
	id   string
	rcv  receiver
	ctx  context.Context
	fail context.CancelCauseFunc

	entries []entry
	known   []bool
	next    int // lowest index whose row has not been seen published

	delivered atomic.Int64
	bytes     atomic.Int64
}

// read is a chunk read in flight: into n bytes at p in the receiver's arena (none for an empty chunk).
type read struct {
	i      int
	e      entry
	p      uintptr
	x      *Xfer
	posted time.Time
}

// free returns the read's buffer to the receiver's arena.
func (f *fetch) free(r *read) {
	if r.p != 0 {
		f.rcv.arena.FreeAddr(r.p)
	}
}

// remote is n bytes at addr of the producer's host memory (its chunk table).
func (f *fetch) remote(addr uint64, n int) Region {
	return Region{Addr: uintptr(addr), Len: n, Mem: MemDRAM}
}

func local(b []byte) Region {
	return Region{Addr: uintptr(unsafe.Pointer(&b[0])), Len: len(b), Mem: MemDRAM}
}

// into is the region of n bytes at p in the receiver's arena.
func (f *fetch) into(p uintptr, n int) Region {
	r := f.rcv.arena.Region()
	return Region{Addr: p, Len: n, Mem: r.Mem, Device: r.Device}
}

func (f *fetch) run() error {
	o := f.c.o
	n := f.l.Chunks
	deliver := make(chan *read, o.Window)
	var sinks sync.WaitGroup
	var sinkErr error
	var sinkOnce sync.Once
	for range o.Window {
		sinks.Add(1)
		go func() {
			defer sinks.Done()
			for r := range deliver {
				if f.ctx.Err() == nil {
					if err := f.rcv.deliver(r.i, r.p, int(r.e.n), r.e.crc); err != nil {
						sinkOnce.Do(func() { sinkErr = ferr(transport.ErrSink, f.id, r.i, "", err) })
						f.fail(sinkErr)
					} else {
						f.delivered.Add(1)
					}
				}
				f.free(r)
			}
		}()
	}
	var inflight []*read
	defer func() {
		// A failed fetch abandons its reads: released where NIXL can cancel them, their memory leaked where
		// it cannot (a late write must not land in a buffer in use again).
		for _, r := range inflight {
			if err := r.x.Release(); err != nil {
				f.c.leaked.Add(int64(r.e.n))
				continue
			}
			f.free(r)
		}
		close(deliver)
		sinks.Wait()
	}()

	tbl, err := f.c.arena.AllocWait(f.ctx, tableLen(n))
	if err != nil {
		return f.ctxErr(ferr(transport.ErrTooLarge, f.id, -1, "no receive memory for the chunk table", err))
	}
	defer f.c.arena.Free(tbl)

	var ready []int // rows seen, not yet read
	received := 0   // chunks read and verified
	lastTable := time.Time{}
	idle := 0
	for received < n || f.delivered.Load() < int64(n) {
		if err := f.ctx.Err(); err != nil {
			return f.ctxErr(nil)
		}
		progress := false
		// Reads done: verify and deliver.
		for k := 0; k < len(inflight); k++ {
			r := inflight[k]
			done, err := r.x.Poll()
			if err != nil {
				return ferr(transport.ErrPeerClosed, f.id, r.i, "reading the producer's memory", err)
			}
			if !done {
				if time.Since(r.posted) > o.IOTimeout {
					return ferr(transport.ErrTimeout, f.id, r.i, fmt.Sprintf("read of %d bytes not done after %v", r.e.n, o.IOTimeout), nil)
				}
				continue
			}
			inflight = append(inflight[:k], inflight[k+1:]...)
			k--
			progress = true
			if err := r.x.Release(); err != nil {
				f.c.leaked.Add(int64(r.e.n))
				return ferr(transport.ErrPeerClosed, f.id, r.i, "releasing a completed read", err)
			}
			got, err := f.rcv.verify(r.p, int(r.e.n))
			if err != nil {
				f.free(r)
				return ferr(transport.ErrSink, f.id, r.i, "checksumming the chunk in receive memory", err)
			}
			if got != r.e.crc {
				f.free(r)
				if gone := f.checkGone(tbl); gone != nil {
					return gone // the producer reused the memory: the handoff ended meanwhile
				}
				return ferr(transport.ErrChecksum, f.id, r.i, fmt.Sprintf("crc32c %08x, the producer's %08x", got, r.e.crc), nil)
			}
			f.bytes.Add(int64(r.e.n))
			received++
			select {
			case deliver <- r:
			case <-f.ctx.Done():
				f.free(r)
				return f.ctxErr(nil)
			}
		}
		// Rows known: post their reads.
		for len(ready) > 0 && len(inflight) < o.Window {
			i := ready[0]
			e := f.entries[i]
			var p uintptr
			if e.n > 0 {
				a := f.rcv.arena
				b, err := a.AllocAddr(int(e.n))
				if err != nil {
					if int(e.n) > a.Size()-arenaAlign {
						return ferr(transport.ErrTooLarge, f.id, i, fmt.Sprintf("a %d-byte chunk, %s receive memory %d bytes", e.n, a.Region().Mem, a.Size()), err)
					}
					break // other reads or sinks hold the memory: later
				}
				p = b
			}
			ready = ready[1:]
			progress = true
			if e.n == 0 {
				received++
				select {
				case deliver <- &read{i: i, e: e}:
				case <-f.ctx.Done():
					return f.ctxErr(nil)
				}
				continue
			}
			r := &read{i: i, e: e, p: p, posted: time.Now()}
			x, err := f.c.ag.Read(f.l.Agent, []Region{f.into(p, int(e.n))}, []Region{e.region()})
			if err != nil {
				f.free(r)
				return ferr(transport.ErrPeerClosed, f.id, i, "posting a read of the producer's memory", err)
			}
			r.x = x
			inflight = append(inflight, r)
		}
		// Rows not yet seen: read the table again, at most every PollInterval.
		if len(ready) == 0 && f.next < n && time.Since(lastTable) >= o.PollInterval {
			lastTable = time.Now()
			found, err := f.readTable(tbl)
			if err != nil {
				return err
			}
			if len(found) > 0 {
				ready = append(ready, found...)
				progress = true
			}
		}
		if progress {
			idle = 0
			continue
		}
		idle++
		if idle > 8 { // spin a little for reads about to finish, then sleep instead of burning a core
			time.Sleep(min(time.Duration(idle)*5*time.Microsecond, o.PollInterval))
		}
	}
	return nil
}

// ctxErr names why the fetch's context ended: the cause a sink gave, or the caller's context.
func (f *fetch) ctxErr(fallback error) error {
	if c := context.Cause(f.ctx); c != nil {
		var te *transport.Error
		if errors.As(c, &te) {
			return c
		}
		return ferr(c, f.id, -1, "", nil)
	}
	return fallback
}

// readTable reads the header and the rows from f.next on, and returns the indices newly seen published.
func (f *fetch) readTable(tbl []byte) ([]int, error) {
	n := f.l.Chunks
	lo := headerSize + entrySize*f.next
	regs := []Region{local(tbl[:headerSize])}
	rems := []Region{f.remote(f.l.Table, headerSize)}
	if f.next < n {
		regs = append(regs, local(tbl[lo:]))
		rems = append(rems, f.remote(f.l.Table+uint64(lo), len(tbl)-lo))
	}
	if err := f.wait(regs, rems); err != nil {
		return nil, err
	}
	if err := f.checkHeader(parseHeader(tbl)); err != nil {
		return nil, err
	}
	var found []int
	for i := f.next; i < n; i++ {
		if f.known[i] {
			continue
		}
		e, ok := parseEntry(tbl[headerSize+entrySize*i:], f.l.Nonce, i)
		if !ok {
			continue
		}
		if int(e.n) > f.c.o.MaxChunkSize {
			return nil, ferr(transport.ErrTooLarge, f.id, i, fmt.Sprintf("chunk of %d bytes, limit %d", e.n, f.c.o.MaxChunkSize), nil)
		}
		f.entries[i], f.known[i] = e, true
		found = append(found, i)
	}
	for f.next < n && f.known[f.next] {
		f.next++
	}
	return found, nil
}

// wait reads remote regions into local ones and waits for the read (IOTimeout).
func (f *fetch) wait(local, remote []Region) error {
	x, err := f.c.ag.Read(f.l.Agent, local, remote)
	if err != nil {
		return ferr(transport.ErrPeerClosed, f.id, -1, "posting a read of the chunk table", err)
	}
	t0 := time.Now()
	for spins := 0; ; spins++ {
		done, err := x.Poll()
		if err != nil {
			_ = x.Release()
			return ferr(transport.ErrPeerClosed, f.id, -1, "reading the chunk table", err)
		}
		if done {
			break
		}
		if time.Since(t0) > f.c.o.IOTimeout || f.ctx.Err() != nil {
			if x.Release() != nil {
				f.c.leaked.Add(int64(local[0].Len)) // the table buffer: see Leaked
			}
			if f.ctx.Err() != nil {
				return f.ctxErr(nil)
			}
			return ferr(transport.ErrTimeout, f.id, -1, fmt.Sprintf("reading the chunk table took over %v", f.c.o.IOTimeout), nil)
		}
		if spins > 8 {
			time.Sleep(min(time.Duration(spins)*5*time.Microsecond, f.c.o.PollInterval))
		}
	}
	if err := x.Release(); err != nil {
		return ferr(transport.ErrPeerClosed, f.id, -1, "releasing a table read", err)
	}
	return nil
}

// checkHeader maps the table's header to the fetch's outcome: nil while the handoff is open.
func (f *fetch) checkHeader(h header) error {
	switch {
	case h.magic != tableMagic || h.nonce != f.l.Nonce || h.chunks != f.l.Chunks:
		return ferr(transport.ErrUnknownHandoff, f.id, -1, "the producer no longer holds it (fetched, withdrawn or expired)", nil)
	case h.version != tableVersion:
		return ferr(transport.ErrIncompatibleVersion, f.id, -1, fmt.Sprintf("chunk table version %d, this build reads %d", h.version, tableVersion), nil)
	case h.state == stateFailed:
		return ferr(transport.ErrProducer, f.id, -1, h.msg, nil)
	case h.state == stateExpired:
		return ferr(transport.ErrExpired, f.id, -1, "", nil)
	case h.state != stateOpen:
		return ferr(transport.ErrUnknownHandoff, f.id, -1, h.msg, nil)
	}
	return nil
}

// checkGone re-reads the header after a checksum mismatch: when the handoff ended meanwhile, that is the
// error to report (its memory was reused), not corruption.
func (f *fetch) checkGone(tbl []byte) error {
	if err := f.wait([]Region{local(tbl[:headerSize])}, []Region{f.remote(f.l.Table, headerSize)}); err != nil {
		return err
	}
	return f.checkHeader(parseHeader(tbl))
}
