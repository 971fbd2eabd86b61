package nixl

import (
	"fmt"
	"time"

	"github.com/splitzip/splitzip/connector/transport"
)

// Options configure a [Server] (producer side) or a [Client] (consumer side); each field says which side
// reads it and its default.
type Options struct {
	// Plugin is the NIXL backend plugin (both). Default "UCX".
	Plugin string
	// BackendParams override the plugin's default parameters (both), e.g. UCX's "num_workers".
	BackendParams map[string]string
	// HandoffTTL is how long an offered handoff lives (server). Default 60 s.
	HandoffTTL time.Duration
	// IOTimeout bounds every read of the producer's memory, from post to completion (client): a read that
	// takes longer fails the fetch with transport.ErrTimeout. Default 30 s.
	IOTimeout time.Duration
	// PollInterval is how often a client re-reads the chunk table while chunks are still being produced, and
	// how often a server collects its consumers' notices. Default 200 µs.
	PollInterval time.Duration
	// Window is the number of chunk reads a fetch keeps in flight (client). Default 4.
	Window int
	// MaxChunkSize is the largest chunk served or accepted (both). Default 64 MiB, as on TCP
	// (transport.DefaultMaxChunkSize).
	MaxChunkSize int
	// MaxChunks is the largest chunk count of a handoff (both). Default 1<<20.
	MaxChunks int
	// RecvBytes is the registered host memory a client reads chunks into, shared by its fetches (client);
	// at least Window chunks of the largest size should fit. Default 256 MiB.
	RecvBytes int
	// OnTransfer, if set, is called once per completed transfer with its statistics, as the consumer
	// measured them (server).
	OnTransfer func(transport.Stats)
}

// Option changes one field of Options, validating it.
type Option func(*Options) error

// GetDefaultOptions returns a fresh copy of the defaults.
func GetDefaultOptions() Options {
	return Options{
		Plugin:       "UCX",
		HandoffTTL:   60 * time.Second,
		IOTimeout:    30 * time.Second,
		PollInterval: 200 * time.Microsecond,
		Window:       4,
		MaxChunkSize: transport.DefaultMaxChunkSize,
		MaxChunks:    transport.DefaultMaxChunks,
		RecvBytes:    256 << 20,
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

// newAgentWith builds the options and the agent they name, as a server and a client both start.
func newAgentWith(name string, opts []Option) (Options, *Agent, error) {
	o, err := buildOptions(opts)
	if err != nil {
		return o, nil, err
	}
	ag, err := NewAgent(name, o.Plugin, o.BackendParams)
	return o, ag, err
}

func optErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrOption}, args...)...)
}

// WithPlugin sets Options.Plugin.
func WithPlugin(name string) Option {
	return func(o *Options) error {
		if name == "" {
			return optErr("empty plugin name")
		}
		o.Plugin = name
		return nil
	}
}

// WithBackendParam sets one of Options.BackendParams.
func WithBackendParam(key, value string) Option {
	return func(o *Options) error {
		if key == "" {
			return optErr("empty backend parameter name")
		}
		if o.BackendParams == nil {
			o.BackendParams = map[string]string{}
		}
		o.BackendParams[key] = value
		return nil
	}
}

// WithHandoffTTL sets Options.HandoffTTL (> 0).
func WithHandoffTTL(d time.Duration) Option {
	return func(o *Options) error {
		if d <= 0 {
			return optErr("handoff TTL %v", d)
		}
		o.HandoffTTL = d
		return nil
	}
}

// WithIOTimeout sets Options.IOTimeout (> 0).
func WithIOTimeout(d time.Duration) Option {
	return func(o *Options) error {
		if d <= 0 {
			return optErr("I/O timeout %v", d)
		}
		o.IOTimeout = d
		return nil
	}
}

// WithPollInterval sets Options.PollInterval (1 µs .. 1 s).
func WithPollInterval(d time.Duration) Option {
	return func(o *Options) error {
		if d < time.Microsecond || d > time.Second {
			return optErr("poll interval %v not in 1µs..1s", d)
		}
		o.PollInterval = d
		return nil
	}
}

// WithWindow sets Options.Window (1..64).
func WithWindow(n int) Option {
	return func(o *Options) error {
		if n < 1 || n > 64 {
			return optErr("window %d not in 1..64", n)
		}
		o.Window = n
		return nil
	}
}

// WithMaxChunkSize sets Options.MaxChunkSize (1 .. 1 GiB).
func WithMaxChunkSize(n int) Option {
	return func(o *Options) error {
		if n < 1 || n > transport.ChunkSizeLimit {
			return optErr("max chunk size %d not in 1..1GiB", n)
		}
		o.MaxChunkSize = n
		return nil
	}
}

// WithMaxChunks sets Options.MaxChunks (1 .. 1<<24).
func WithMaxChunks(n int) Option {
	return func(o *Options) error {
		if n < 1 || n > transport.ChunkCountLimit {
			return optErr("max chunks %d not in 1..%d", n, transport.ChunkCountLimit)
		}
		o.MaxChunks = n
		return nil
	}
}

// WithRecvBytes sets Options.RecvBytes (at least 1 MiB).
func WithRecvBytes(n int) Option {
	return func(o *Options) error {
		if n < 1<<20 {
			return optErr("receive memory %d bytes, at least 1 MiB", n)
		}
		o.RecvBytes = n
		return nil
	}
}

// WithOnTransfer sets Options.OnTransfer.
func WithOnTransfer(f func(transport.Stats)) Option {
	return func(o *Options) error { o.OnTransfer = f; return nil }
}
