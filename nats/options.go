package nats

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"
)

// Storage selects where JetStream keeps the control-plane buckets.
type Storage int

const (
	// FileStorage keeps records on disk: they survive a server restart that
	// reuses the store directory. The default.
	FileStorage Storage = iota
	// MemoryStorage keeps records in server memory: faster, lost when the
	// server restarts.
	MemoryStorage
)

func (s Storage) String() string {
	switch s {
	case FileStorage:
		return "file"
	case MemoryStorage:
		return "memory"
	}
	return fmt.Sprintf("Storage(%d)", int(s))
}

// Options configures a Plane. Build it with GetDefaultOptions and Option
// functions; the zero value is not meant to be used directly.
type Options struct {
	// URL of an external NATS server or cluster (comma-separated list
	// allowed). Default "": start an embedded server in-process.
	URL string

	// User and Password authenticate to the server. With the embedded server
	// they become the server's only user. Default: none.
	User, Password string

	// Token authenticates to the server. With the embedded server it becomes
	// the server's token. Default: none.
	Token string

	// NKeyFile is a file holding an nkey user seed. External servers only.
	NKeyFile string

	// CredentialsFile is a JWT user credentials (.creds) file. External
	// servers only.
	CredentialsFile string

	// TLSConfig, when non-nil, makes the connection use TLS. External servers
	// only. Set by WithTLS or WithTLSConfig.
	TLSConfig *tls.Config

	// Name is the client connection name shown by the server.
	// Default "splitzip".
	Name string

	// Namespace separates independent deployments sharing one NATS server:
	// it is part of every bucket name and subject. Default "default".
	Namespace string

	// Timeout bounds connecting and every control-plane operation whose
	// context has no deadline. Default 5s.
	Timeout time.Duration

	// HandoffTTL is how long an unclaimed handoff stays valid after it is
	// published; it is the default expiry of a record. Default 60s.
	HandoffTTL time.Duration

	// ExpiredGrace is how long the server keeps a record after its expiry, so
	// that late readers get ErrHandoffExpired rather than ErrUnknownHandoff.
	// The bucket's TTL is HandoffTTL + ExpiredGrace. Default 30s.
	ExpiredGrace time.Duration

	// EngineTTL is how long an engine registration lives without a heartbeat;
	// registered engines are refreshed every EngineTTL/3. Default 15s.
	EngineTTL time.Duration

	// MaxInFlight bounds the shard records this Plane has opened (PutShard)
	// and not yet deleted (DeleteShard) or seen expire. Default 1024.
	MaxInFlight int

	// Storage of the JetStream buckets. Default FileStorage.
	Storage Storage

	// Replicas is how many servers of a JetStream cluster hold each bucket
	// (1..5; 3 survives the loss of one server). It applies when this Plane
	// creates the buckets; existing buckets keep theirs. External servers
	// only. Default 1.
	Replicas int

	// ReconnectWait is the pause between reconnect attempts. Default 250ms.
	ReconnectWait time.Duration

	// MaxReconnects bounds reconnect attempts after a disconnect; -1 retries
	// forever. Default -1.
	MaxReconnects int

	// EmbeddedHost is the interface the embedded server listens on.
	// Default "127.0.0.1".
	EmbeddedHost string

	// EmbeddedPort is the client port of the embedded server; -1 picks a free
	// port. Default -1.
	EmbeddedPort int

	// EmbeddedStoreDir is the JetStream store directory of the embedded
	// server. Default "": a fresh temporary directory removed by Close.
	EmbeddedStoreDir string
}

// Option sets one field of Options, validating its argument.
type Option func(*Options) error

// GetDefaultOptions returns a fresh copy of the default options.
func GetDefaultOptions() Options {
	return Options{
		Name:          "splitzip",
		Namespace:     "default",
		Timeout:       5 * time.Second,
		HandoffTTL:    60 * time.Second,
		ExpiredGrace:  30 * time.Second,
		EngineTTL:     15 * time.Second,
		MaxInFlight:   1024,
		Storage:       FileStorage,
		Replicas:      1,
		ReconnectWait: 250 * time.Millisecond,
		MaxReconnects: -1,
		EmbeddedHost:  "127.0.0.1",
		EmbeddedPort:  -1,
	}
}

func optErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidOption}, args...)...)
}

// WithURL connects to an external NATS server or cluster instead of starting
// an embedded one. url may be a comma-separated list of nats:// or tls:// URLs.
func WithURL(u string) Option {
	return func(o *Options) error {
		if strings.TrimSpace(u) == "" {
			return optErr("empty URL")
		}
		for _, part := range strings.Split(u, ",") {
			p, err := url.Parse(strings.TrimSpace(part))
			if err != nil || p.Host == "" {
				return optErr("URL %q: want scheme://host:port", part)
			}
		}
		o.URL = u
		return nil
	}
}

// WithUserInfo authenticates with a user name and password.
func WithUserInfo(user, password string) Option {
	return func(o *Options) error {
		if user == "" {
			return optErr("empty user name")
		}
		o.User, o.Password = user, password
		return nil
	}
}

// WithToken authenticates with a token.
func WithToken(token string) Option {
	return func(o *Options) error {
		if token == "" {
			return optErr("empty token")
		}
		o.Token = token
		return nil
	}
}

// WithNKeyFile authenticates with the nkey user seed in path.
func WithNKeyFile(path string) Option {
	return func(o *Options) error {
		if err := readable(path); err != nil {
			return optErr("nkey seed file: %v", err)
		}
		o.NKeyFile = path
		return nil
	}
}

// WithCredentials authenticates with the JWT user credentials file path.
func WithCredentials(path string) Option {
	return func(o *Options) error {
		if err := readable(path); err != nil {
			return optErr("credentials file: %v", err)
		}
		o.CredentialsFile = path
		return nil
	}
}

// WithTLS enables TLS. caFile (PEM) verifies the server, replacing the system
// roots; certFile and keyFile, given together, present a client certificate.
// Empty strings leave the respective part out; all three empty is an error.
// Files are read now, so a bad path fails here.
func WithTLS(caFile, certFile, keyFile string) Option {
	return func(o *Options) error {
		if caFile == "" && certFile == "" && keyFile == "" {
			return optErr("WithTLS needs a CA file or a client certificate")
		}
		if (certFile == "") != (keyFile == "") {
			return optErr("WithTLS needs both certFile and keyFile, or neither")
		}
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if caFile != "" {
			pem, err := os.ReadFile(caFile)
			if err != nil {
				return optErr("TLS CA file: %v", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return optErr("TLS CA file %s holds no PEM certificate", caFile)
			}
			cfg.RootCAs = pool
		}
		if certFile != "" {
			cert, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return optErr("TLS client certificate: %v", err)
			}
			cfg.Certificates = []tls.Certificate{cert}
		}
		o.TLSConfig = cfg
		return nil
	}
}

// WithTLSConfig enables TLS with cfg (used as given, not copied).
func WithTLSConfig(cfg *tls.Config) Option {
	return func(o *Options) error {
		if cfg == nil {
			return optErr("nil TLS config")
		}
		o.TLSConfig = cfg
		return nil
	}
}

// WithName sets the client connection name.
func WithName(name string) Option {
	return func(o *Options) error {
		if name == "" {
			return optErr("empty connection name")
		}
		o.Name = name
		return nil
	}
}

// WithNamespace sets the namespace ([A-Za-z0-9_-], at most 128 characters)
// that separates deployments sharing a server.
func WithNamespace(ns string) Option {
	return func(o *Options) error {
		if !validName(ns) {
			return optErr("namespace %q: want 1..%d characters of [A-Za-z0-9_-]", ns, maxNameLen)
		}
		o.Namespace = ns
		return nil
	}
}

// WithBucketPrefix is WithNamespace under the name used by the design notes.
func WithBucketPrefix(prefix string) Option { return WithNamespace(prefix) }

func positive(name string, d time.Duration, min time.Duration) error {
	if d < min {
		return optErr("%s %v: want at least %v", name, d, min)
	}
	return nil
}

// WithTimeout bounds connecting and operations whose context has no deadline.
func WithTimeout(d time.Duration) Option {
	return func(o *Options) error {
		if err := positive("timeout", d, time.Millisecond); err != nil {
			return err
		}
		o.Timeout = d
		return nil
	}
}

// WithHandoffTTL sets how long an unclaimed handoff stays valid (at least 1s).
func WithHandoffTTL(d time.Duration) Option {
	return func(o *Options) error {
		if err := positive("handoff TTL", d, time.Second); err != nil {
			return err
		}
		o.HandoffTTL = d
		return nil
	}
}

// WithExpiredGrace sets how long expired records stay readable as expired
// (zero allowed: expired records may then read as unknown at once).
func WithExpiredGrace(d time.Duration) Option {
	return func(o *Options) error {
		if d < 0 {
			return optErr("expired grace %v is negative", d)
		}
		o.ExpiredGrace = d
		return nil
	}
}

// WithEngineTTL sets the lifetime of an engine registration without
// heartbeat (at least 1s; heartbeats every third of it).
func WithEngineTTL(d time.Duration) Option {
	return func(o *Options) error {
		if err := positive("engine TTL", d, time.Second); err != nil {
			return err
		}
		o.EngineTTL = d
		return nil
	}
}

// WithMaxInFlight bounds this Plane's undeleted, unexpired shard records.
func WithMaxInFlight(n int) Option {
	return func(o *Options) error {
		if n < 1 {
			return optErr("max in-flight handoffs %d: want at least 1", n)
		}
		o.MaxInFlight = n
		return nil
	}
}

// WithStorage selects file or memory storage for the buckets.
func WithStorage(s Storage) Option {
	return func(o *Options) error {
		if s != FileStorage && s != MemoryStorage {
			return optErr("unknown storage %v", s)
		}
		o.Storage = s
		return nil
	}
}

// WithReplicas sets Options.Replicas: the buckets this Plane creates are
// replicated on n servers of a JetStream cluster (1..5).
func WithReplicas(n int) Option {
	return func(o *Options) error {
		if n < 1 || n > 5 {
			return optErr("replicas %d: want 1..5", n)
		}
		o.Replicas = n
		return nil
	}
}

// WithReconnect sets the reconnect policy: maxReconnects attempts (-1 for
// unlimited) spaced by wait.
func WithReconnect(maxReconnects int, wait time.Duration) Option {
	return func(o *Options) error {
		if maxReconnects < -1 {
			return optErr("max reconnects %d: want -1 or more", maxReconnects)
		}
		if err := positive("reconnect wait", wait, time.Millisecond); err != nil {
			return err
		}
		o.MaxReconnects, o.ReconnectWait = maxReconnects, wait
		return nil
	}
}

// WithEmbeddedServer configures the embedded server started when no URL is
// set: listen host (default 127.0.0.1), client port (-1 for a free one) and
// JetStream store directory ("" for a temporary one removed by Close).
func WithEmbeddedServer(host string, port int, storeDir string) Option {
	return func(o *Options) error {
		if host == "" {
			host = "127.0.0.1"
		}
		if port < -1 || port > 65535 {
			return optErr("embedded server port %d out of range", port)
		}
		if port == 0 {
			port = -1
		}
		o.EmbeddedHost, o.EmbeddedPort, o.EmbeddedStoreDir = host, port, storeDir
		return nil
	}
}

func readable(path string) error {
	if path == "" {
		return fmt.Errorf("empty path")
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	return f.Close()
}

// validate checks the combination of options.
func (o *Options) validate() error {
	if o.URL == "" {
		if o.TLSConfig != nil || o.NKeyFile != "" || o.CredentialsFile != "" {
			return optErr("TLS, nkey and credentials options need WithURL (the embedded server supports user/password or token only)")
		}
		if o.Replicas > 1 {
			return optErr("replicas %d need WithURL: the embedded server is a single server", o.Replicas)
		}
	}
	if o.Token != "" && o.User != "" {
		return optErr("set either a token or a user, not both")
	}
	if !validName(o.Namespace) {
		return optErr("namespace %q", o.Namespace)
	}
	if o.HandoffTTL < time.Second || o.EngineTTL < time.Second || o.Timeout <= 0 || o.MaxInFlight < 1 {
		return optErr("TTLs, timeout and in-flight bound must be positive")
	}
	return nil
}
