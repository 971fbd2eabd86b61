package transport

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"
)

// Options configures a [Server] (producer side) or a [Fetch] (consumer side).
// One struct serves both; each field says which side reads it, the other side
// ignores it. Zero values of a field mean "use the default" only through
// [GetDefaultOptions]; options validate their argument, so a bad value fails
// Listen or Fetch before any connection is made.
type Options struct {
	// Conns is the number of parallel TCP connections one Fetch opens (never
	// more than the handoff has chunks). Fetch. Default: half the host's
	// cores, at least 4 and at most 8. On a 16-core host one connection
	// carried 30 Gbit/s and eight 114 (loopback, with the consumer's copy),
	// so eight fill a 100 Gbit/s link where four may not; on a 2-core host
	// eight cost more in scheduling than they add.
	Conns int
	// Window is the number of chunk requests in flight per connection, so
	// the producer always has the next request queued when it finishes a
	// chunk. Fetch. Default 2.
	Window int
	// IOTimeout bounds every single read and write (an idle timeout: a
	// large chunk is written in slices, each with its own deadline), the
	// dial, and the handshake. The producer sends keepalives every
	// IOTimeout/4 while it waits for a chunk to be produced, so slow
	// production does not trip it. Both. Default 30 s.
	IOTimeout time.Duration
	// MaxChunkSize is the largest chunk accepted (Fetch) or served (Server),
	// in bytes; checked before any allocation. Both. Default 64 MiB.
	MaxChunkSize int
	// MaxChunks is the largest chunk count per handoff. Both. Default 1<<20.
	MaxChunks int
	// RateLimit caps the payload rate in bytes per second, shared by all
	// connections of one Fetch or of one Server; 0 means unlimited. Used to
	// emulate a slower link where tc is not available. Both. Default 0.
	RateLimit int64
	// SocketBuffer sets SO_SNDBUF and SO_RCVBUF when > 0. The default 0
	// leaves Linux's buffer autotuning in charge, which is usually faster:
	// setting the option explicitly disables autotuning and is capped by
	// net.core.{r,w}mem_max. Both. Default 0.
	SocketBuffer int
	// HandoffTTL is how long an offered handoff lives. When it runs out
	// the handoff is removed, a transfer in progress is aborted (the
	// consumer sees ErrExpired) and the payload is released. Server.
	// Default 60 s.
	HandoffTTL time.Duration
	// MaxTransfers bounds the transfers in progress at once; a consumer
	// beyond it gets ErrBusy. Server. Default 256.
	MaxTransfers int
	// MaxConns bounds the open connections (handshaking or transferring);
	// one beyond it is answered ErrBusy and closed. Server. Default 1024.
	MaxConns int
	// TLS, when set, runs every connection over TLS with this
	// configuration: the Server as a TLS server (set ClientAuth and
	// ClientCAs for mutual TLS: WithTLSFiles does), Fetch as a TLS client
	// (RootCAs verify the producer; ServerName defaults to the dialed host,
	// see TLSServerName). Both sides must agree: a plain consumer of a TLS
	// producer gets ErrTLS, and so does a TLS consumer of a plain one.
	// Both. Default nil: plain TCP.
	TLS *tls.Config
	// TLSServerName is the name a Fetch verifies in the producer's
	// certificate instead of the dialed host (one certificate for a whole
	// cluster, say). Fetch. Default "": the host of the address dialed.
	TLSServerName string
	// OnTransfer, if set, is called once per transfer when it ends, with
	// its statistics (Stats.Err is nil for a completed transfer). Server.
	// It must not block for long.
	OnTransfer func(Stats)

	// version is the protocol version spoken; tests change it.
	version uint16
}

// The chunk limits every payload transport applies (connector/nixl's options take the same): the defaults of
// MaxChunkSize and MaxChunks, and the largest values they accept.
const (
	DefaultMaxChunkSize = 64 << 20
	DefaultMaxChunks    = 1 << 20
	ChunkSizeLimit      = 1 << 30
	ChunkCountLimit     = 1 << 24
)

// Option changes one field of Options and validates it.
type Option func(*Options) error

// GetDefaultOptions returns a fresh copy of the defaults.
func GetDefaultOptions() Options {
	return Options{
		Conns:        min(max(runtime.NumCPU()/2, 4), 8),
		Window:       2,
		IOTimeout:    30 * time.Second,
		MaxChunkSize: DefaultMaxChunkSize,
		MaxChunks:    DefaultMaxChunks,
		HandoffTTL:   60 * time.Second,
		MaxTransfers: 256,
		MaxConns:     1024,
		version:      ProtocolVersion,
	}
}

func buildOptions(opts []Option) (Options, error) {
	o := GetDefaultOptions()
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if err := opt(&o); err != nil {
			return o, err
		}
	}
	return o, nil
}

func errOption(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrOption}, args...)...)
}

// WithConns sets Options.Conns (1..64).
func WithConns(n int) Option {
	return func(o *Options) error {
		if n < 1 || n > 64 {
			return errOption("conns %d not in 1..64", n)
		}
		o.Conns = n
		return nil
	}
}

// WithWindow sets Options.Window (1..64).
func WithWindow(n int) Option {
	return func(o *Options) error {
		if n < 1 || n > 64 {
			return errOption("window %d not in 1..64", n)
		}
		o.Window = n
		return nil
	}
}

// WithIOTimeout sets Options.IOTimeout (> 0).
func WithIOTimeout(d time.Duration) Option {
	return func(o *Options) error {
		if d <= 0 {
			return errOption("io timeout %v must be positive", d)
		}
		o.IOTimeout = d
		return nil
	}
}

// WithMaxChunkSize sets Options.MaxChunkSize (1 .. 1 GiB).
func WithMaxChunkSize(n int) Option {
	return func(o *Options) error {
		if n < 1 || n > ChunkSizeLimit {
			return errOption("max chunk size %d not in 1..1GiB", n)
		}
		o.MaxChunkSize = n
		return nil
	}
}

// WithMaxChunks sets Options.MaxChunks (1 .. 1<<24).
func WithMaxChunks(n int) Option {
	return func(o *Options) error {
		if n < 1 || n > ChunkCountLimit {
			return errOption("max chunks %d not in 1..%d", n, ChunkCountLimit)
		}
		o.MaxChunks = n
		return nil
	}
}

// WithRateLimit sets Options.RateLimit in bytes per second (0 = unlimited).
// 1 Gbit/s is 125_000_000.
func WithRateLimit(bytesPerSecond int64) Option {
	return func(o *Options) error {
		if bytesPerSecond < 0 {
			return errOption("rate limit %d must not be negative", bytesPerSecond)
		}
		o.RateLimit = bytesPerSecond
		return nil
	}
}

// WithSocketBuffer sets Options.SocketBuffer in bytes (0 = autotuning).
func WithSocketBuffer(n int) Option {
	return func(o *Options) error {
		if n < 0 {
			return errOption("socket buffer %d must not be negative", n)
		}
		o.SocketBuffer = n
		return nil
	}
}

// WithHandoffTTL sets Options.HandoffTTL (> 0).
func WithHandoffTTL(d time.Duration) Option {
	return func(o *Options) error {
		if d <= 0 {
			return errOption("handoff ttl %v must be positive", d)
		}
		o.HandoffTTL = d
		return nil
	}
}

// WithMaxTransfers sets Options.MaxTransfers (>= 1).
func WithMaxTransfers(n int) Option {
	return func(o *Options) error {
		if n < 1 {
			return errOption("max transfers %d must be >= 1", n)
		}
		o.MaxTransfers = n
		return nil
	}
}

// WithMaxConns sets Options.MaxConns (>= 1).
func WithMaxConns(n int) Option {
	return func(o *Options) error {
		if n < 1 {
			return errOption("max conns %d must be >= 1", n)
		}
		o.MaxConns = n
		return nil
	}
}

// WithOnTransfer sets Options.OnTransfer.
func WithOnTransfer(f func(Stats)) Option {
	return func(o *Options) error {
		o.OnTransfer = f
		return nil
	}
}

// WithTLSConfig sets Options.TLS to cfg (used as given, not copied). It
// must hold a certificate: a Server presents it, a Fetch presents it as its
// client certificate (mutual TLS).
func WithTLSConfig(cfg *tls.Config) Option {
	return func(o *Options) error {
		if cfg == nil {
			return errOption("nil TLS config")
		}
		if len(cfg.Certificates) == 0 && cfg.GetCertificate == nil && cfg.GetClientCertificate == nil {
			return errOption("TLS config holds no certificate (engines authenticate each other: mutual TLS)")
		}
		o.TLS = cfg
		return nil
	}
}

// WithTLSFiles sets Options.TLS to mutual TLS from PEM files: caFile holds
// the certificate authorities that sign the engines' certificates (both
// the producer's and the consumer's are checked against them), certFile and
// keyFile this engine's certificate chain and key. TLS 1.3 only. The files
// are read once, when WithTLSFiles is called (a bad path or a key that does
// not match fails the Listen or Fetch given the option), and every use of the
// option shares one configuration, so that a consumer's fetches to a
// producer resume TLS sessions instead of a full handshake per connection.
func WithTLSFiles(caFile, certFile, keyFile string) Option {
	cfg, err := mutualTLS(caFile, certFile, keyFile)
	return func(o *Options) error {
		if err != nil {
			return err
		}
		o.TLS = cfg
		return nil
	}
}

func mutualTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	if caFile == "" || certFile == "" || keyFile == "" {
		return nil, errOption("TLS needs a CA file, a certificate file and a key file (got %q, %q, %q)", caFile, certFile, keyFile)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, errOption("TLS CA file: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errOption("TLS CA file %s holds no PEM certificate", caFile)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, errOption("TLS certificate %s / key %s: %v", certFile, keyFile, err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		// Later connections to a producer resume the session (TLS 1.3 PSK with the producer's ticket, which
		// holds the verified client certificate) instead of a full handshake: a fetch opens several.
		ClientSessionCache: tls.NewLRUClientSessionCache(256),
	}, nil
}

// WithTLSServerName sets Options.TLSServerName.
func WithTLSServerName(name string) Option {
	return func(o *Options) error {
		if name == "" {
			return errOption("empty TLS server name")
		}
		o.TLSServerName = name
		return nil
	}
}

// withVersion makes this side speak another protocol version (tests only).
func withVersion(v uint16) Option {
	return func(o *Options) error {
		if v == 0 {
			return errors.New("splitzip/transport: version 0 is reserved")
		}
		o.version = v
		return nil
	}
}

// Stats describes one transfer.
type Stats struct {
	// ID is the handoff id (whole: stats go to the id's owner, not into error text).
	ID string
	// Bytes is the payload bytes moved (chunk data, without headers).
	Bytes int64
	// Chunks is the number of chunks moved.
	Chunks int
	// Conns is the number of connections that carried the transfer.
	Conns int
	// Duration runs from the first dial (Fetch) or the claim (Server) to
	// the end.
	Duration time.Duration
	// Err is nil for a completed transfer (server side only; Fetch returns
	// its error separately).
	Err error
}

// Throughput returns Bytes per second, or 0 for an empty transfer.
func (s Stats) Throughput() float64 {
	if s.Duration <= 0 {
		return 0
	}
	return float64(s.Bytes) / s.Duration.Seconds()
}
