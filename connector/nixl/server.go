package nixl

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/splitzip/splitzip/connector/transport"
)

// Server is the producer side: it publishes each offered payload's chunks in a table in registered memory,
// where consumers read the table and then the chunks themselves with one-sided NIXL reads, straight from the
// memory the producer staged them in. A consumer that has verified every chunk sends a FIN notice over NIXL;
// the server then releases the payload. It is safe for concurrent use.
type Server struct {
	o  Options
	ag *Agent

	mu       sync.Mutex
	arena    *Arena
	dev      *Arena // device memory chunks may lie in (UseDeviceMemory)
	md       []byte // the agent's metadata with its memory registered
	handoffs map[string]*handoff
	closed   bool
	kick     chan struct{} // wakes the notice loop when a handoff is offered

	stop chan struct{}
	wg   sync.WaitGroup
}

type handoff struct {
	id     string
	p      transport.Payload
	n      int
	table  []byte
	nonce  uint64
	timer  *time.Timer
	ctx    context.Context
	cancel context.CancelFunc
	bounce [][]byte // chunks copied into the arena (their memory was not registered)
	done   chan struct{}
}

// NewServer creates the producer's agent, named name (unique among the agents of the deployment). It serves
// nothing until UseArena gives it registered memory.
func NewServer(name string, opts ...Option) (*Server, error) {
	o, ag, err := newAgentWith(name, opts)
	if err != nil {
		return nil, err
	}
	s := &Server{o: o, ag: ag, handoffs: map[string]*handoff{}, kick: make(chan struct{}, 1), stop: make(chan struct{})}
	s.wg.Add(1)
	go s.noticeLoop()
	return s, nil
}

// Agent is the server's NIXL agent.
func (s *Server) Agent() *Agent { return s.ag }

// UseArena registers mem (host memory) as the server's staging arena, from which Alloc hands out buffers and
// the chunk tables are carved. The caller owns mem and keeps it mapped until another arena replaces it or
// Close returns (buffers handed out may still be written meanwhile). A previous arena is deregistered; that
// is refused while handoffs are offered.
func (s *Server) UseArena(mem []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if len(s.handoffs) > 0 {
		return fmt.Errorf("%w: cannot replace the staging arena with %d handoffs offered", ErrOption, len(s.handoffs))
	}
	a := NewArena(mem)
	if err := s.ag.Register(a.Region()); err != nil {
		return err
	}
	md, err := s.ag.Metadata()
	if err != nil {
		return errors.Join(err, s.ag.Deregister(a.Region()))
	}
	if err := s.dropArenaLocked(); err != nil {
		return errors.Join(err, s.ag.Deregister(a.Region()))
	}
	s.arena, s.md = a, md
	return nil
}

// UseDeviceMemory registers m.Region (a GPU's memory, say) as memory the server's payloads may stage chunks
// in: a payload that implements DeviceChunker names chunks there, which consumers read in place, straight into
// their own memory (CUDA IPC between GPUs of one host, GPUDirect RDMA across hosts, as UCX can). The server
// hands out buffers from it (AllocDevice); the caller keeps it allocated until Close returns. Like UseArena it
// is refused while handoffs are offered, and it replaces an earlier one. m.CRC32C is not used: a
// DeviceChunker gives each chunk's CRC-32C.
func (s *Server) UseDeviceMemory(m DeviceMemory) error {
	if m.Region.Addr == 0 || m.Region.Len <= arenaAlign || m.Region.Device > 0xFFFF {
		return fmt.Errorf("%w: device memory of %d bytes at %#x on device %d", ErrOption, m.Region.Len, m.Region.Addr, m.Region.Device)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return ErrClosed
	case len(s.handoffs) > 0:
		return fmt.Errorf("%w: cannot replace the device memory with %d handoffs offered", ErrOption, len(s.handoffs))
	}
	if err := s.ag.Register(m.Region); err != nil {
		return err
	}
	md, err := s.ag.Metadata()
	if err == nil && s.dev != nil {
		err = s.ag.Deregister(s.dev.Region())
	}
	if err != nil {
		return errors.Join(err, s.ag.Deregister(m.Region))
	}
	s.dev, s.md = NewRegionArena(m.Region), md
	return nil
}

// AllocDevice returns the address of a buffer of n bytes in the device memory (UseDeviceMemory), or an error
// wrapping ErrArena when it cannot hold one now.
func (s *Server) AllocDevice(n int) (uintptr, error) {
	s.mu.Lock()
	d := s.dev
	s.mu.Unlock()
	if d == nil {
		return 0, fmt.Errorf("%w: no device memory (UseDeviceMemory)", ErrArena)
	}
	return d.AllocAddr(n)
}

// AllocDeviceWait is AllocDevice that waits for buffers to be freed while none is large enough, until ctx
// ends; a buffer larger than the whole device memory fails at once.
func (s *Server) AllocDeviceWait(ctx context.Context, n int) (uintptr, error) {
	s.mu.Lock()
	d := s.dev
	s.mu.Unlock()
	if d == nil {
		return 0, fmt.Errorf("%w: no device memory (UseDeviceMemory)", ErrArena)
	}
	return d.AllocAddrWait(ctx, n)
}

// DeviceInUse is the device memory's bytes handed out (AllocDevice) and not yet freed.
func (s *Server) DeviceInUse() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dev == nil {
		return 0
	}
	return s.dev.InUse()
}

// FreeDevice returns a buffer from AllocDevice.
func (s *Server) FreeDevice(p uintptr) {
	s.mu.Lock()
	d := s.dev
	s.mu.Unlock()
	if d != nil {
		d.FreeAddr(p)
	}
}

func (s *Server) dropArenaLocked() error {
	if s.arena == nil {
		return nil
	}
	err := s.ag.Deregister(s.arena.Region())
	s.arena, s.md = nil, nil
	return err
}

// Alloc returns a buffer of n bytes from the registered arena: chunks staged there are read by consumers in
// place. It fails with an error wrapping ErrArena when the arena cannot hold n bytes now.
func (s *Server) Alloc(n int) ([]byte, error) {
	s.mu.Lock()
	a := s.arena
	s.mu.Unlock()
	if a == nil {
		return nil, fmt.Errorf("%w: no staging arena (UseArena)", ErrArena)
	}
	return a.Alloc(n)
}

// Free returns a buffer from Alloc.
func (s *Server) Free(b []byte) {
	s.mu.Lock()
	a := s.arena
	s.mu.Unlock()
	if a != nil && a.Contains(b) {
		a.Free(b)
	}
}

// ArenaInUse is the arena's bytes handed out (staged chunks and tables).
func (s *Server) ArenaInUse() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.arena == nil {
		return 0
	}
	return s.arena.InUse()
}

// Offer publishes p under id (from NewHandoffID; the id is the capability to fetch it) until a consumer has
// fetched it, it is withdrawn, it expires (HandoffTTL) or the server closes; p.Release is called exactly once
// in each case. Chunks are published in index order as p makes them ready.
func (s *Server) Offer(id string, p transport.Payload) error {
	n := p.NumChunks()
	if id == "" || len(id) > 255 {
		return fmt.Errorf("splitzip/nixl: offer: handoff id length %d not in 1..255", len(id))
	}
	if n < 0 || n > s.o.MaxChunks {
		return &transport.Error{Kind: transport.ErrTooLarge, ID: shortID(id), Chunk: -1, Detail: fmt.Sprintf("offer: %d chunks, limit %d", n, s.o.MaxChunks)}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return transport.ErrClosed
	case s.arena == nil:
		return fmt.Errorf("%w: no staging arena (UseArena)", ErrArena)
	case s.handoffs[id] != nil:
		return fmt.Errorf("splitzip/nixl: offer: handoff %s already offered", shortID(id))
	}
	table, err := s.arena.Alloc(tableLen(n))
	if err != nil {
		return fmt.Errorf("splitzip/nixl: offer: the chunk table: %w", err)
	}
	var nb [8]byte
	_, _ = rand.Read(nb[:])
	h := &handoff{id: id, p: p, n: n, table: table, nonce: binary.LittleEndian.Uint64(nb[:]), done: make(chan struct{})}
	clear(table)
	putHeader(table, n, h.nonce)
	h.ctx, h.cancel = context.WithCancel(context.Background())
	h.timer = time.AfterFunc(s.o.HandoffTTL, func() { s.retire(h, transport.ErrExpired, nil) })
	s.handoffs[id] = h
	s.wg.Add(1)
	go s.publish(h, s.arena, s.dev)
	select {
	case s.kick <- struct{}{}:
	default:
	}
	return nil
}

// Locator returns what a consumer needs to read handoff id (for the control plane's record).
func (s *Server) Locator(id string) (json.RawMessage, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.handoffs[id]
	if h == nil {
		return nil, fmt.Errorf("%w (handoff %s)", transport.ErrUnknownHandoff, shortID(id))
	}
	return json.Marshal(Locator{V: tableVersion, Agent: s.ag.Name(), Metadata: s.md,
		Table: uint64(uintptr(unsafe.Pointer(&h.table[0]))), Chunks: h.n, Nonce: h.nonce})
}

// publish writes each chunk's row as the payload makes it ready: a row pointing into the device memory dev for
// a chunk a DeviceChunker stages there, else into the arena a.
func (s *Server) publish(h *handoff, a, dev *Arena) {
	defer s.wg.Done()
	defer close(h.done)
	cs, _ := h.p.(transport.ChunkChecksummer)
	dc, _ := h.p.(DeviceChunker)
	for i := range h.n {
		if dc != nil {
			e, ok, err := deviceEntry(h.ctx, dc, dev, i, s.o.MaxChunkSize)
			if err != nil {
				if h.ctx.Err() == nil {
					setState(h.table, stateFailed, fmt.Sprintf("chunk %d: %v", i, err))
				}
				return
			}
			if ok {
				putEntry(h.table, h.nonce, i, e)
				continue
			}
		}
		data, err := h.p.Chunk(h.ctx, i)
		if err != nil {
			if h.ctx.Err() == nil { // the producer failed; a release ends the loop silently
				setState(h.table, stateFailed, fmt.Sprintf("chunk %d: %v", i, err))
			}
			return
		}
		if len(data) > s.o.MaxChunkSize || len(data) > 1<<32-1 {
			setState(h.table, stateFailed, fmt.Sprintf("chunk %d: %d bytes, limit %d", i, len(data), s.o.MaxChunkSize))
			return
		}
		var crc uint32
		known := false
		if cs != nil {
			crc, known = cs.ChunkCRC(i)
		}
		if !known {
			crc = crc32.Checksum(data, castagnoli)
		}
		if len(data) > 0 && !a.Contains(data) {
			// Not staged in registered memory: copied once into the arena, where consumers can read it.
			b, err := a.Alloc(len(data))
			if err != nil {
				setState(h.table, stateFailed, fmt.Sprintf("chunk %d: %v", i, err))
				return
			}
			copy(b, data)
			s.mu.Lock()
			h.bounce = append(h.bounce, b)
			s.mu.Unlock()
			data = b
		}
		var addr uint64
		if len(data) > 0 {
			addr = uint64(uintptr(unsafe.Pointer(&data[0])))
		}
		putEntry(h.table, h.nonce, i, entry{addr: addr, n: uint32(len(data)), crc: crc})
	}
}

// retire removes h (once) and releases its payload with cause; st, for a completed transfer, goes to
// OnTransfer.
func (s *Server) retire(h *handoff, cause error, st *transport.Stats) {
	s.mu.Lock()
	if s.handoffs[h.id] != h {
		s.mu.Unlock()
		return
	}
	delete(s.handoffs, h.id)
	s.mu.Unlock()
	h.timer.Stop()
	switch {
	case cause == nil:
	case errors.Is(cause, transport.ErrExpired):
		setState(h.table, stateExpired, "handoff expired")
	default:
		setState(h.table, stateReleased, cause.Error())
	}
	h.cancel()
	<-h.done // the publisher has stopped touching the table and the payload
	// The transfer is reported before the payload's release, as the TCP server does: the producer forgets the
	// handoff on release, and a report after it would find nothing to measure the link with.
	if st != nil && s.o.OnTransfer != nil {
		s.o.OnTransfer(*st)
	}
	h.p.Release(cause)
	s.mu.Lock()
	a := s.arena
	s.mu.Unlock()
	if a != nil {
		for _, b := range h.bounce {
			a.Free(b)
		}
		a.Free(h.table)
	}
}

// Withdraw removes handoff id; it reports whether it was offered.
func (s *Server) Withdraw(id string) bool {
	s.mu.Lock()
	h := s.handoffs[id]
	s.mu.Unlock()
	if h == nil {
		return false
	}
	s.retire(h, transport.ErrWithdrawn, nil)
	return true
}

// Pending is the number of handoffs offered and not yet released.
func (s *Server) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.handoffs)
}

// finPrefix starts the notice a consumer sends once it verified every chunk: "SZNX1 FIN <id> <bytes> <ns>".
const finPrefix = "SZNX1 FIN "

func finNotice(id string, bytes int64, d time.Duration) []byte {
	return []byte(finPrefix + id + " " + strconv.FormatInt(bytes, 10) + " " + strconv.FormatInt(int64(d), 10))
}

// noticeLoop collects consumers' FIN notices while handoffs are offered.
func (s *Server) noticeLoop() {
	defer s.wg.Done()
	t := time.NewTicker(max(s.o.PollInterval, time.Millisecond))
	defer t.Stop()
	for {
		if s.Pending() == 0 {
			select {
			case <-s.stop:
				return
			case <-s.kick:
			}
		}
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		ns, err := s.ag.Notifications()
		if err != nil {
			continue // a closed agent: stop follows
		}
		for _, n := range ns {
			f := strings.Fields(strings.TrimPrefix(string(n.Msg), finPrefix))
			if !strings.HasPrefix(string(n.Msg), finPrefix) || len(f) != 3 {
				continue
			}
			bytes, _ := strconv.ParseInt(f[1], 10, 64)
			ns, _ := strconv.ParseInt(f[2], 10, 64)
			s.mu.Lock()
			h := s.handoffs[f[0]]
			s.mu.Unlock()
			if h != nil {
				s.retire(h, nil, &transport.Stats{ID: h.id, Bytes: bytes, Chunks: h.n, Conns: 1, Duration: time.Duration(ns)})
			}
		}
	}
}

// Close releases every payload (transport.ErrClosed), stops serving, deregisters the arena and destroys the
// agent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	hs := make([]*handoff, 0, len(s.handoffs))
	for _, h := range s.handoffs {
		hs = append(hs, h)
	}
	s.mu.Unlock()
	for _, h := range hs {
		s.retire(h, transport.ErrClosed, nil)
	}
	close(s.stop)
	s.wg.Wait()
	s.mu.Lock()
	err := s.dropArenaLocked()
	if s.dev != nil {
		err = errors.Join(err, s.ag.Deregister(s.dev.Region()))
		s.dev = nil
	}
	s.mu.Unlock()
	return errors.Join(err, s.ag.Close())
}

// shortID keeps enough of an id to correlate logs without printing the whole capability.
func shortID(id string) string {
	if len(id) > 16 {
		return id[:12] + "…"
	}
	return id
}
