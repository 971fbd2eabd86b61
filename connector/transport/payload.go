package transport

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
)

// Payload is what a producer offers under a handoff id: an ordered list of
// chunks whose count is fixed when the handoff is created, while the chunks
// themselves may still be being produced when the consumer starts fetching.
//
// The server calls Chunk from several goroutines at once (one per
// connection), possibly more than once for the same index (a consumer may
// retry a failed transfer), and calls Release exactly once.
type Payload interface {
	// NumChunks returns the chunk count. It must not change.
	NumChunks() int
	// Chunk returns chunk i, blocking until it is ready, the payload
	// failed, or ctx is done (then it returns ctx's error promptly). The
	// returned slice is sent without copying and must stay unmodified until
	// Release.
	Chunk(ctx context.Context, i int) ([]byte, error)
	// Release tells the producer that the server dropped the handoff and no
	// longer reads its chunks: err is nil after a completed transfer, or
	// the reason (ErrExpired, ErrWithdrawn, ErrClosed). Staging memory may
	// be freed. It must not block.
	Release(err error)
}

// ChunkChecksummer is optionally implemented by a Payload that already knows its chunks' CRC-32C
// (Castagnoli), e.g. because the producer publishes them: the server then sends that value instead of
// computing it again. A wrong value fails the consumer's check, as corruption would.
type ChunkChecksummer interface {
	// ChunkCRC returns chunk i's CRC-32C, and false when it is not known.
	ChunkCRC(i int) (uint32, bool)
}

// NewHandoffID returns a fresh unguessable handoff id: 128 random bits in
// hex. The id names a handoff; the secret given to Offer (NewSecret) is what
// lets a consumer fetch it.
func NewHandoffID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("splitzip/transport: crypto/rand: " + err.Error())
	}
	return hex.EncodeToString(b[:])
}

// NewSecret returns a fresh handoff secret: 32 bytes from crypto/rand. Give
// it to Offer, and to the one consumer the handoff is for by a channel other
// than the one that carries the id.
func NewSecret() []byte {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic("splitzip/transport: crypto/rand: " + err.Error())
	}
	return b
}

func checkSecret(secret []byte) error {
	if len(secret) < MinSecretLen || len(secret) > MaxSecretLen {
		return fmt.Errorf("%w: handoff secret of %d bytes, want %d..%d", ErrOption, len(secret), MinSecretLen, MaxSecretLen)
	}
	return nil
}

// StreamPayload is a Payload filled over time: the producer calls Put for
// each chunk as it is encoded, in any order, or Fail if encoding failed.
// A consumer fetching it receives each chunk as soon as it is Put.
type StreamPayload struct {
	n         int
	onRelease func(error)

	mu       sync.Mutex
	chunks   [][]byte
	crcs     []uint32 // set by PutWithCRC
	hasCRC   []bool
	have     []bool
	failErr  error
	relErr   error
	wake     chan struct{} // closed and replaced on every state change
	released chan struct{}
}

// NewStreamPayload returns a payload of n chunks, none ready yet. onRelease,
// if not nil, is called once when the server releases the payload (see
// Payload.Release).
func NewStreamPayload(n int, onRelease func(err error)) *StreamPayload {
	if n < 0 {
		n = 0
	}
	return &StreamPayload{
		n:         n,
		onRelease: onRelease,
		chunks:    make([][]byte, n),
		have:      make([]bool, n),
		wake:      make(chan struct{}),
		released:  make(chan struct{}),
	}
}

// NumChunks implements Payload.
func (s *StreamPayload) NumChunks() int { return s.n }

// Put makes chunk i available. data is retained, not copied: do not modify
// it until the payload is released. Put fails for an index out of range, a
// chunk already put, or a released payload (stop producing then).
func (s *StreamPayload) Put(i int, data []byte) error { return s.put(i, data, 0, false) }

// PutWithCRC is Put for a chunk whose CRC-32C the producer computed already (see ChunkChecksummer).
func (s *StreamPayload) PutWithCRC(i int, data []byte, crc uint32) error {
	return s.put(i, data, crc, true)
}

// ChunkCRC implements ChunkChecksummer.
func (s *StreamPayload) ChunkCRC(i int) (uint32, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i < 0 || i >= s.n || s.hasCRC == nil {
		return 0, false
	}
	return s.crcs[i], s.hasCRC[i]
}

func (s *StreamPayload) put(i int, data []byte, crc uint32, known bool) error {
	if i < 0 || i >= s.n {
		return fmt.Errorf("splitzip/transport: put chunk %d of %d: index out of range", i, s.n)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.relErr != nil || s.isReleased():
		return fmt.Errorf("splitzip/transport: put chunk %d: %w", i, ErrReleased)
	case s.have[i]:
		return fmt.Errorf("splitzip/transport: put chunk %d: already put", i)
	}
	s.chunks[i], s.have[i] = data, true
	if known {
		if s.hasCRC == nil {
			s.crcs, s.hasCRC = make([]uint32, s.n), make([]bool, s.n)
		}
		s.crcs[i], s.hasCRC[i] = crc, true
	}
	s.broadcast()
	return nil
}

// Fail marks the payload as failed: pending and future Chunk calls return an
// error wrapping ErrProducer and err, and the consumer's Fetch fails with
// ErrProducer. Only the first Fail counts.
func (s *StreamPayload) Fail(err error) {
	if err == nil {
		err = fmt.Errorf("unspecified failure")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failErr == nil {
		s.failErr = err
		s.broadcast()
	}
}

// Chunk implements Payload.
func (s *StreamPayload) Chunk(ctx context.Context, i int) ([]byte, error) {
	if i < 0 || i >= s.n {
		return nil, fmt.Errorf("splitzip/transport: chunk %d of %d: index out of range", i, s.n)
	}
	for {
		s.mu.Lock()
		switch {
		case s.isReleased():
			s.mu.Unlock()
			return nil, ErrReleased
		case s.failErr != nil:
			err := s.failErr
			s.mu.Unlock()
			return nil, fmt.Errorf("%w: %w", ErrProducer, err)
		case s.have[i]:
			b := s.chunks[i]
			s.mu.Unlock()
			return b, nil
		}
		wake := s.wake
		s.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Release implements Payload: it drops the chunks and calls onRelease.
func (s *StreamPayload) Release(err error) {
	s.mu.Lock()
	if s.isReleased() {
		s.mu.Unlock()
		return
	}
	s.relErr = err
	s.chunks = nil
	close(s.released)
	s.broadcast()
	s.mu.Unlock()
	if s.onRelease != nil {
		s.onRelease(err)
	}
}

// Released is closed once the payload is released.
func (s *StreamPayload) Released() <-chan struct{} { return s.released }

// ReleaseErr returns the release reason (nil after a completed transfer, or
// before release).
func (s *StreamPayload) ReleaseErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.relErr
}

func (s *StreamPayload) isReleased() bool {
	select {
	case <-s.released:
		return true
	default:
		return false
	}
}

func (s *StreamPayload) broadcast() {
	close(s.wake)
	s.wake = make(chan struct{})
}

// BytesPayload is a Payload whose chunks are all ready.
type BytesPayload struct {
	chunks    [][]byte
	onRelease func(error)
	once      sync.Once
}

// NewBytesPayload returns a payload over chunks (retained, not copied).
// onRelease, if not nil, is called once on release.
func NewBytesPayload(chunks [][]byte, onRelease func(err error)) *BytesPayload {
	return &BytesPayload{chunks: chunks, onRelease: onRelease}
}

// NumChunks implements Payload.
func (p *BytesPayload) NumChunks() int { return len(p.chunks) }

// Chunk implements Payload.
func (p *BytesPayload) Chunk(_ context.Context, i int) ([]byte, error) {
	if i < 0 || i >= len(p.chunks) {
		return nil, fmt.Errorf("splitzip/transport: chunk %d of %d: index out of range", i, len(p.chunks))
	}
	return p.chunks[i], nil
}

// Release implements Payload.
func (p *BytesPayload) Release(err error) {
	p.once.Do(func() {
		if p.onRelease != nil {
			p.onRelease(err)
		}
	})
}

// nowChunker is implemented by this package's payloads: it returns a chunk
// without blocking if it is ready, sparing the server a timer per chunk.
type nowChunker interface {
	chunkNow(i int) (data []byte, ready bool)
}

// readyChunk returns chunk i if p can tell it is ready without blocking.
func readyChunk(p Payload, i int) ([]byte, bool) {
	if nc, ok := p.(nowChunker); ok {
		return nc.chunkNow(i)
	}
	return nil, false
}

func (s *StreamPayload) chunkNow(i int) ([]byte, bool) {
	if i < 0 || i >= s.n {
		return nil, false // let Chunk report it
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.have[i] && s.failErr == nil && !s.isReleased() {
		return s.chunks[i], true
	}
	return nil, false
}

func (p *BytesPayload) chunkNow(i int) ([]byte, bool) {
	if i < 0 || i >= len(p.chunks) {
		return nil, false
	}
	return p.chunks[i], true
}
