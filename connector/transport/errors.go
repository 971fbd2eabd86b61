package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
)

// Sentinel errors. Errors returned by this package wrap one of them (compare
// with errors.Is); the text adds the handoff id (shortened), the chunk index
// where one applies, and the underlying cause.
var (
	// ErrUnknownHandoff: the producer has no handoff under this id (never
	// offered, withdrawn, or already fetched successfully), or the consumer
	// does not hold the handoff's secret: the producer gives both the same
	// answer, so that a consumer without the secret learns nothing.
	ErrUnknownHandoff = errors.New("splitzip/transport: unknown handoff")
	// ErrExpired: the handoff's time to live ran out before or during the
	// transfer.
	ErrExpired = errors.New("splitzip/transport: handoff expired")
	// ErrChecksum: a chunk's CRC32C did not match its data.
	ErrChecksum = errors.New("splitzip/transport: chunk checksum mismatch")
	// ErrPeerClosed: the peer closed or reset the connection, or shut down,
	// before the transfer completed (truncated transfer).
	ErrPeerClosed = errors.New("splitzip/transport: peer closed connection")
	// ErrIncompatibleVersion: the peer speaks another protocol version.
	ErrIncompatibleVersion = errors.New("splitzip/transport: incompatible protocol version")
	// ErrTimeout: a read or write made no progress within the I/O timeout.
	ErrTimeout = errors.New("splitzip/transport: i/o timeout")
	// ErrBusy: the producer is at its limit of connections or transfers, or
	// the handoff is being fetched by another consumer. Retrying later may
	// succeed.
	ErrBusy = errors.New("splitzip/transport: producer busy")
	// ErrProducer: the producer failed to produce a chunk (for example the
	// encoder failed; see [StreamPayload.Fail]).
	ErrProducer = errors.New("splitzip/transport: producer failed")
	// ErrTooLarge: a chunk or chunk count exceeds the configured limit.
	ErrTooLarge = errors.New("splitzip/transport: size limit exceeded")
	// ErrProtocol: the peer sent something this protocol does not allow.
	ErrProtocol = errors.New("splitzip/transport: protocol violation")
	// ErrSink: the sink returned an error for a chunk.
	ErrSink = errors.New("splitzip/transport: sink failed")
	// ErrUnreachable: the producer could not be dialed.
	ErrUnreachable = errors.New("splitzip/transport: producer unreachable")
	// ErrClosed: the server is closed.
	ErrClosed = errors.New("splitzip/transport: server closed")
	// ErrWithdrawn: the handoff was withdrawn by the producer (release cause
	// passed to [Payload.Release]; a consumer sees ErrUnknownHandoff).
	ErrWithdrawn = errors.New("splitzip/transport: handoff withdrawn")
	// ErrReleased: the payload was released; returned by StreamPayload.Put
	// and Chunk afterwards.
	ErrReleased = errors.New("splitzip/transport: payload released")
	// ErrTLS: the TLS handshake failed (certificate not trusted, no client
	// certificate, one side without TLS).
	ErrTLS = errors.New("splitzip/transport: TLS handshake failed")
	// ErrOption: an option's value is invalid, or options contradict each
	// other.
	ErrOption = errors.New("splitzip/transport: invalid option")
)

// Error is the concrete type of errors returned by Fetch and the server:
// Kind is one of the sentinels above, Err the underlying cause if any.
// errors.Is works against both.
type Error struct {
	Kind   error  // a sentinel of this package
	ID     string // handoff id, shortened (ids are capabilities; logs get a prefix)
	Chunk  int    // chunk index, or -1
	Detail string // human detail, may be empty
	Err    error  // underlying cause, may be nil
}

func (e *Error) Error() string {
	var b strings.Builder
	if k := e.Kind.Error(); strings.HasPrefix(k, prefix) {
		b.WriteString(k)
	} else { // a context error
		b.WriteString(prefix)
		b.WriteString(k)
	}
	if e.ID != "" || e.Chunk >= 0 {
		b.WriteString(" (")
		if e.ID != "" {
			b.WriteString("handoff ")
			b.WriteString(e.ID)
		}
		if e.Chunk >= 0 {
			if e.ID != "" {
				b.WriteString(", ")
			}
			b.WriteString("chunk ")
			b.WriteString(strconv.Itoa(e.Chunk))
		}
		b.WriteString(")")
	}
	if e.Detail != "" {
		b.WriteString(": ")
		b.WriteString(e.Detail)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns the sentinel and the cause.
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

const prefix = "splitzip/transport: "

func newError(kind error, id string, chunk int, detail string, cause error) *Error {
	return &Error{Kind: kind, ID: shortID(id), Chunk: chunk, Detail: detail, Err: cause}
}

// shortID keeps enough of an id to correlate logs without printing the whole
// capability.
func shortID(id string) string {
	if len(id) > 16 {
		return id[:12] + "…"
	}
	return id
}

// ioKind classifies a network error into a sentinel.
func ioKind(err error) error {
	var (
		ne    net.Error
		op    *net.OpError
		alert tls.AlertError
		cert  *tls.CertificateVerificationError
		rec   tls.RecordHeaderError
	)
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return err
	case errors.As(err, &alert), errors.As(err, &cert), errors.As(err, &rec),
		errors.As(err, &op) && op.Op == "remote error": // a TLS alert from the peer
		// TLS 1.3 reports a refused client certificate at the first read.
		return ErrTLS
	case errors.As(err, &ne) && ne.Timeout():
		return ErrTimeout
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, syscall.ECONNABORTED), errors.Is(err, net.ErrClosed):
		return ErrPeerClosed
	}
	return ErrPeerClosed
}
