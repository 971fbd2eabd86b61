package connector

import (
	"fmt"
	"time"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/connector/nixl"
	"github.com/splitzip/splitzip/connector/transport"
)

// Bypass decides whether a handoff's frames are compressed or sent raw.
type Bypass int

const (
	// BypassAuto sends raw frames when the pipeline model (see Mode) predicts them faster than every codec
	// mode allowed: the link outruns the codec.
	BypassAuto Bypass = iota
	// BypassNever always compresses.
	BypassNever
	// BypassAlways always sends raw frames (the baseline in benchmarks).
	BypassAlways
)

func (b Bypass) String() string {
	switch b {
	case BypassAuto:
		return "auto"
	case BypassNever:
		return "never"
	case BypassAlways:
		return "always"
	}
	return fmt.Sprintf("bypass(%d)", int(b))
}

// ParseBypass reads "auto", "never" (always compress) or "always" (never compress).
func ParseBypass(s string) (Bypass, error) {
	switch s {
	case "auto", "":
		return BypassAuto, nil
	case "never", "compress":
		return BypassNever, nil
	case "always", "raw":
		return BypassAlways, nil
	}
	return 0, fmt.Errorf("%w: bypass %q (want auto, never or always)", ErrOption, s)
}

// Options configure a Producer or a Consumer. Each field says its default and which side reads it.
type Options struct {
	// EngineID names this engine on the control plane (required; [A-Za-z0-9_-]).
	EngineID string
	// Rank is this worker's tensor-parallel rank (default 0).
	Rank int
	// ListenAddr is where a Producer serves payloads (default "127.0.0.1:0": loopback, any port; use a
	// routable address for multi-host).
	ListenAddr string
	// AdvertiseAddr is the host:port consumers dial; default: the listener's address.
	AdvertiseAddr string
	// StagingBytes bounds the producer's host memory for encoded frames (default 1 GiB).
	StagingBytes int64
	// HandoffTTL is how long a producer keeps an unclaimed handoff (default 2 minutes).
	HandoffTTL time.Duration
	// LoadTimeout bounds one consumer load from start to done (default 2 minutes).
	LoadTimeout time.Duration
	// RecordWait is how long a consumer waits for a handoff's record to appear on the control plane before it
	// fails the load as unknown (default 10 s; the producer publishes before it hands the id out).
	RecordWait time.Duration
	// Bypass chooses compressed or raw frames (default BypassAuto).
	Bypass Bypass
	// Mode chooses the codec mode of each handoff's frames (default ModeAuto; producer). See Mode for how it
	// combines with Bypass.
	Mode Mode
	// LinkRate is the link's speed in bytes per second, which the auto choices (BypassAuto, ModeAuto) weigh
	// the codec against; 0 takes the transport's rate limit when one is set (WithTransport), else measures the
	// link from transfers.
	LinkRate float64
	// Codebook pins the codebook of fast-mode frames (producer). nil: frames use a codebook learned per layer
	// from earlier handoffs (the built-in one until it is learned), on host and GPU caches alike.
	Codebook *codec.Codebook
	// CodeTable pins the code table of high-ratio frames (producer); nil learns one per layer's K and V from
	// earlier handoffs.
	CodeTable *codec.CodeTable
	// FrameBytes bounds the raw bytes of one frame, the unit of pipelining (default 8 MiB; producer).
	FrameBytes int64
	// MaxInFlight bounds concurrent handoffs per side (default 256).
	MaxInFlight int
	// HugePages advises transparent huge pages for a registered host KV cache (default true; both sides): see
	// HugePageReport. The cache's contents are untouched; only its backing pages change.
	HugePages bool
	// Transport options for the payload server (producer) or fetches (consumer).
	Transport []transport.Option
	// PayloadTransport is how payloads move (default TransportTCP; both sides): TransportTCP, SplitZip's
	// own protocol (connector/transport), or TransportNIXL, one-sided reads over NIXL/UCX (connector/nixl)
	// from the producer's registered staging memory, through RDMA, NVLink or shared memory where UCX has
	// them. A consumer fetches each handoff the way its record says; it needs TransportNIXL to read NIXL
	// handoffs, and still reads TCP ones.
	PayloadTransport string
	// NIXL options for the NIXL server (producer) or client (consumer), with TransportNIXL.
	NIXL []nixl.Option
	// NIXLDeviceReceive is the GPU memory, in bytes, a consumer with a GPU cache reads NIXL chunks into, so
	// that they land where they are decoded: verified there by the CRC kernel and decoded in place, with no
	// copy through host memory on the consumer (default 0: chunks are read into host memory). It needs
	// TransportNIXL, a GPU cache (RegisterDeviceCache) and a UCX with CUDA transports (cuda_copy; cuda_ipc
	// between GPUs of one host, GPUDirect RDMA across hosts). At least 4 chunks (Window) of the largest size
	// should fit.
	NIXLDeviceReceive int64
	// NIXLDeviceStaging makes a producer with a GPU cache stage its frames in GPU memory (StagingBytes of it,
	// plus a quarter, registered with NIXL) instead of pinned host memory: the encoders write each frame there,
	// the CRC kernel checksums it there, and consumers read it in place (CUDA IPC between GPUs of one host,
	// GPUDirect RDMA across hosts). Default false. It needs TransportNIXL and UCX's CUDA transports on both
	// engines, and GPU memory beside the engine's KV cache.
	NIXLDeviceStaging bool
}

// The payload transports (Options.PayloadTransport).
const (
	TransportTCP  = "tcp"
	TransportNIXL = "nixl"
)

// Option sets one field of Options, validating it.
type Option func(*Options) error

// GetDefaultOptions returns the defaults.
func GetDefaultOptions() Options {
	return Options{
		ListenAddr:   "127.0.0.1:0",
		StagingBytes: 1 << 30,
		HandoffTTL:   2 * time.Minute,
		LoadTimeout:  2 * time.Minute,
		RecordWait:   10 * time.Second,
		MaxInFlight:  256,
		FrameBytes:   8 << 20,
		HugePages:    true,

		PayloadTransport: TransportTCP,
	}
}

func optErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrOption}, args...)...)
}

// WithEngineID names this engine.
func WithEngineID(id string) Option {
	return func(o *Options) error {
		if id == "" {
			return optErr("empty engine id")
		}
		o.EngineID = id
		return nil
	}
}

// WithRank sets the tensor-parallel rank.
func WithRank(r int) Option {
	return func(o *Options) error {
		if r < 0 {
			return optErr("rank %d", r)
		}
		o.Rank = r
		return nil
	}
}

// WithListenAddr sets the producer's payload listener, e.g. "0.0.0.0:7500".
func WithListenAddr(addr string) Option {
	return func(o *Options) error { o.ListenAddr = addr; return nil }
}

// WithAdvertiseAddr sets the address consumers dial when it differs from the listener's (NAT, 0.0.0.0).
func WithAdvertiseAddr(addr string) Option {
	return func(o *Options) error { o.AdvertiseAddr = addr; return nil }
}

// WithStagingBytes bounds the producer's staging memory.
func WithStagingBytes(n int64) Option {
	return func(o *Options) error {
		if n <= 0 {
			return optErr("staging bytes %d", n)
		}
		o.StagingBytes = n
		return nil
	}
}

// WithHandoffTTL sets how long an unclaimed handoff lives.
func WithHandoffTTL(d time.Duration) Option {
	return func(o *Options) error {
		if d <= 0 {
			return optErr("handoff TTL %v", d)
		}
		o.HandoffTTL = d
		return nil
	}
}

// WithLoadTimeout bounds one load.
func WithLoadTimeout(d time.Duration) Option {
	return func(o *Options) error {
		if d <= 0 {
			return optErr("load timeout %v", d)
		}
		o.LoadTimeout = d
		return nil
	}
}

// WithRecordWait bounds the wait for a handoff's record.
func WithRecordWait(d time.Duration) Option {
	return func(o *Options) error {
		if d <= 0 {
			return optErr("record wait %v", d)
		}
		o.RecordWait = d
		return nil
	}
}

// WithBypass sets the compression policy.
func WithBypass(b Bypass) Option {
	return func(o *Options) error {
		if b < BypassAuto || b > BypassAlways {
			return optErr("bypass %d", int(b))
		}
		o.Bypass = b
		return nil
	}
}

// WithLinkRate declares the link speed in bytes per second (0: the transport's rate limit, else measured).
func WithLinkRate(bytesPerSecond float64) Option {
	return func(o *Options) error {
		if bytesPerSecond < 0 {
			return optErr("link rate %v", bytesPerSecond)
		}
		o.LinkRate = bytesPerSecond
		return nil
	}
}

// WithCodebook pins the producer's fast-mode codebook, in place of the built-in one and those learned per layer.
func WithCodebook(cb *codec.Codebook) Option {
	return func(o *Options) error {
		if cb == nil {
			return optErr("nil codebook")
		}
		o.Codebook = cb
		return nil
	}
}

// WithFrameBytes bounds the raw size of one frame (at least one block per frame is always sent).
func WithFrameBytes(n int64) Option {
	return func(o *Options) error {
		if n <= 0 {
			return optErr("frame bytes %d", n)
		}
		o.FrameBytes = n
		return nil
	}
}

// WithMaxInFlight bounds concurrent handoffs.
func WithMaxInFlight(n int) Option {
	return func(o *Options) error {
		if n <= 0 {
			return optErr("max in flight %d", n)
		}
		o.MaxInFlight = n
		return nil
	}
}

// WithHugePages turns the huge-page advice for registered host caches on (the default) or off.
func WithHugePages(on bool) Option {
	return func(o *Options) error { o.HugePages = on; return nil }
}

// WithTransport passes options to the payload transport (connections, rate limit, timeouts).
func WithTransport(opts ...transport.Option) Option {
	return func(o *Options) error { o.Transport = append(o.Transport, opts...); return nil }
}

// WithTLS runs the payload transport over mutual TLS (TLS 1.3): caFile holds the authorities that sign the
// engines' certificates, certFile and keyFile this engine's (PEM). Every engine of a deployment needs it:
// a producer with TLS refuses plain consumers and the reverse. The files are read now.
func WithTLS(caFile, certFile, keyFile string) Option {
	return func(o *Options) error {
		opt := transport.WithTLSFiles(caFile, certFile, keyFile)
		var to transport.Options
		if err := opt(&to); err != nil {
			return fmt.Errorf("%w: %w", ErrOption, err)
		}
		o.Transport = append(o.Transport, transport.WithTLSConfig(to.TLS))
		return nil
	}
}

// WithPayloadTransport chooses how payloads move: "tcp" (the default) or "nixl" (see
// Options.PayloadTransport). NIXL's library is loaded when the producer or consumer is made; a machine
// without it fails there with an error wrapping nixl.ErrNoLibrary.
func WithPayloadTransport(name string) Option {
	return func(o *Options) error {
		switch name {
		case TransportTCP, "":
			o.PayloadTransport = TransportTCP
		case TransportNIXL:
			o.PayloadTransport = TransportNIXL
		default:
			return optErr("payload transport %q (want tcp or nixl)", name)
		}
		return nil
	}
}

// WithNIXLDeviceReceive makes a consumer with a GPU cache read NIXL chunks into n bytes of its GPU's memory
// (Options.NIXLDeviceReceive); 0 reads them into host memory.
func WithNIXLDeviceReceive(n int64) Option {
	return func(o *Options) error {
		if n < 0 {
			return optErr("NIXL device receive memory of %d bytes", n)
		}
		o.NIXLDeviceReceive = n
		return nil
	}
}

// WithNIXLDeviceStaging makes a producer with a GPU cache stage frames in GPU memory that NIXL serves in place
// (Options.NIXLDeviceStaging).
func WithNIXLDeviceStaging(on bool) Option {
	return func(o *Options) error { o.NIXLDeviceStaging = on; return nil }
}

// WithNIXL passes options to the NIXL server or client (backend parameters, timeouts, receive memory).
func WithNIXL(opts ...nixl.Option) Option {
	return func(o *Options) error { o.NIXL = append(o.NIXL, opts...); return nil }
}

func buildOptions(opts []Option) (Options, error) {
	o := GetDefaultOptions()
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return o, err
		}
	}
	if o.EngineID == "" {
		return o, optErr("an engine id is required (WithEngineID)")
	}
	return o, o.Check()
}

// Check reports options that contradict each other (each Option validates its own field); producers and
// consumers refuse them.
func (o Options) Check() error {
	if o.NIXLDeviceReceive > 0 && o.PayloadTransport != TransportNIXL {
		return optErr("NIXL device receive memory needs the payload transport nixl (WithPayloadTransport)")
	}
	if o.NIXLDeviceStaging && o.PayloadTransport != TransportNIXL {
		return optErr("NIXL device staging needs the payload transport nixl (WithPayloadTransport)")
	}
	return nil
}
