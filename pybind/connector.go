package pybind

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/metrics"
	"strconv"
	"strings"
	"time"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/connector"
	"github.com/splitzip/splitzip/connector/nixl"
	"github.com/splitzip/splitzip/connector/transport"
	szn "github.com/splitzip/splitzip/nats"
)

// The connector surface: the control plane (NATS), producers (prefill side) and consumers (decode side) of KV
// handoffs, for the engine bindings in python/splitzip_connector (handoff.py, vllm/). Handles are integers,
// options and layouts JSON objects, block ids and per-layer base addresses comma-separated integers (the
// cheapest thing for Python to build and Go to parse on a per-step path), results JSON.

func init() {
	extraKinds = append(extraKinds, connectorKind)
}

func connectorKind(err error) string {
	switch {
	case errors.Is(err, connector.ErrOption), errors.Is(err, szn.ErrInvalidOption), errors.Is(err, transport.ErrOption),
		errors.Is(err, nixl.ErrNoLibrary), errors.Is(err, nixl.ErrLibrary), errors.Is(err, nixl.ErrOption):
		return KindOption // transport=nixl on a machine without NIXL's library is a configuration to change
	case errors.Is(err, connector.ErrAccess), errors.Is(err, transport.ErrTLS):
		return KindAccess
	case errors.Is(err, connector.ErrLayout), errors.Is(err, connector.ErrBlocks):
		return KindLayout
	case errors.Is(err, connector.ErrNotRegistered):
		return KindNotRegistered
	case errors.Is(err, connector.ErrClosed):
		return KindClosed
	case errors.Is(err, connector.ErrDuplicate):
		return KindDuplicate
	case errors.Is(err, connector.ErrUnknownRequest):
		return KindUnknownRequest
	case errors.Is(err, connector.ErrMismatch), errors.Is(err, szn.ErrLayoutMismatch), errors.Is(err, szn.ErrDTypeMismatch),
		errors.Is(err, szn.ErrIncompatibleVersion):
		return KindMismatch
	case errors.Is(err, connector.ErrFrame):
		return KindFrame
	case errors.Is(err, connector.ErrStagingFull), errors.Is(err, szn.ErrTooManyHandoffs):
		return KindBusy
	case errors.Is(err, szn.ErrUnknownHandoff), errors.Is(err, szn.ErrHandoffExpired), errors.Is(err, szn.ErrHandoffReleased),
		errors.Is(err, szn.ErrHandoffExists):
		return KindHandoff
	case errors.Is(err, context.DeadlineExceeded):
		return KindTimeout
	case errors.Is(err, szn.ErrDisconnected), errors.Is(err, szn.ErrInvalidRecord), errors.Is(err, szn.ErrUnknownEngine),
		errors.Is(err, szn.ErrCompletionRejected):
		return KindControlPlane
	}
	return ""
}

var (
	planes    = newHandles[*szn.Plane]("control plane")
	producers = newHandles[*connector.Producer]("producer")
	consumers = newHandles[*connector.Consumer]("consumer")
)

// planeOptions is the JSON form of the control plane's options; absent fields keep nats.GetDefaultOptions.
type planeOptions struct {
	URL             string   `json:"url"`       // "" starts an embedded server in this process
	Namespace       string   `json:"namespace"` // separates deployments sharing one server
	Name            string   `json:"name"`
	User            string   `json:"user"`
	Password        string   `json:"password"`
	Token           string   `json:"token"`
	CredentialsFile string   `json:"credentials_file"`
	NKeyFile        string   `json:"nkey_file"` // an nkey user seed file
	TLSCA           string   `json:"tls_ca"`    // TLS to the NATS servers: CA file (PEM) that verifies them
	TLSCert         string   `json:"tls_cert"`  // and a client certificate and key, for servers that verify clients
	TLSKey          string   `json:"tls_key"`
	TimeoutS        *float64 `json:"timeout_s"`
	HandoffTTLS     *float64 `json:"handoff_ttl_s"`
	Storage         string   `json:"storage"` // "file" (default) or "memory"
	EmbeddedHost    string   `json:"embedded_host"`
	EmbeddedPort    *int     `json:"embedded_port"`
	EmbeddedStore   string   `json:"embedded_store_dir"`
}

// endpointOptions is the JSON form of a producer's or consumer's options (connector.Options). A field that is
// absent or null keeps connector.GetDefaultOptions' (or transport.GetDefaultOptions') value, so callers state
// no defaults of their own; a field that is present is validated by its option function, zero included. Each
// side ignores the other's fields.
type endpointOptions struct {
	EngineID      string   `json:"engine_id"`
	Rank          int      `json:"rank"`
	ListenAddr    *string  `json:"listen_addr"`
	AdvertiseAddr *string  `json:"advertise_addr"`
	StagingBytes  *int64   `json:"staging_bytes"`
	HandoffTTLS   *float64 `json:"handoff_ttl_s"`
	LoadTimeoutS  *float64 `json:"load_timeout_s"`
	RecordWaitS   *float64 `json:"record_wait_s"`
	Bypass        *string  `json:"bypass"`          // auto, never (always compress), always (never compress)
	Mode          *string  `json:"mode"`            // auto, fast, high-ratio: the codec mode of a handoff's frames
	CodeTablePath string   `json:"code_table_path"` // a high-ratio code table file; none: learned per layer
	LinkRate      *float64 `json:"link_rate"`
	Codebook      int      `json:"codebook"`      // a codebook handle (codebook.go); 0: built-in
	CodebookPath  string   `json:"codebook_path"` // or a codebook file
	MaxInFlight   *int     `json:"max_in_flight"`
	RateLimit     *int64   `json:"rate_limit"` // bytes/s cap of the payload transport (emulates a slow link)
	Conns         *int     `json:"conns"`
	IOTimeoutS    *float64 `json:"io_timeout_s"`
	// Mutual TLS between the engines on the payload transport: the CA that signs the engines' certificates,
	// this engine's certificate and key (PEM files), and optionally the name to verify in the producer's
	// certificate instead of its host.
	TLSCA         string  `json:"tls_ca"`
	TLSCert       string  `json:"tls_cert"`
	TLSKey        string  `json:"tls_key"`
	TLSServerName string  `json:"tls_server_name"`
	Transport     *string `json:"transport"` // payload transport: tcp or nixl
	// GPU memory a consumer with a GPU cache reads NIXL chunks into (0: host memory)
	NIXLDeviceReceiveBytes *int64 `json:"nixl_device_receive_bytes"`
	// a producer with a GPU cache stages its frames in GPU memory, read there over NIXL
	NIXLDeviceStaging *bool `json:"nixl_device_staging"`
}

// endpointSettings is what a producer or consumer runs with: endpointOptions' settable fields with every
// default filled in (EndpointDefaults, EndpointOptions).
type endpointSettings struct {
	ListenAddr    string  `json:"listen_addr"`
	AdvertiseAddr string  `json:"advertise_addr"`
	StagingBytes  int64   `json:"staging_bytes"`
	HandoffTTLS   float64 `json:"handoff_ttl_s"`
	LoadTimeoutS  float64 `json:"load_timeout_s"`
	RecordWaitS   float64 `json:"record_wait_s"`
	Bypass        string  `json:"bypass"`
	Mode          string  `json:"mode"`
	LinkRate      float64 `json:"link_rate"`
	MaxInFlight   int     `json:"max_in_flight"`
	RateLimit     int64   `json:"rate_limit"`
	Conns         int     `json:"conns"`
	IOTimeoutS    float64 `json:"io_timeout_s"`
	TLS           bool    `json:"tls"` // the payload transport runs over mutual TLS
	Transport     string  `json:"transport"`

	NIXLDeviceReceiveBytes int64 `json:"nixl_device_receive_bytes"`
	NIXLDeviceStaging      bool  `json:"nixl_device_staging"`
}

func settingsOf(o connector.Options) (endpointSettings, error) {
	t := transport.GetDefaultOptions()
	for _, opt := range o.Transport {
		if err := opt(&t); err != nil {
			return endpointSettings{}, err
		}
	}
	return endpointSettings{
		ListenAddr:    o.ListenAddr,
		AdvertiseAddr: o.AdvertiseAddr,
		StagingBytes:  o.StagingBytes,
		HandoffTTLS:   o.HandoffTTL.Seconds(),
		LoadTimeoutS:  o.LoadTimeout.Seconds(),
		RecordWaitS:   o.RecordWait.Seconds(),
		Bypass:        o.Bypass.String(),
		Mode:          o.Mode.String(),
		LinkRate:      o.LinkRate,
		MaxInFlight:   o.MaxInFlight,
		RateLimit:     t.RateLimit,
		Conns:         t.Conns,
		IOTimeoutS:    t.IOTimeout.Seconds(),
		TLS:           t.TLS != nil,
		Transport:     o.PayloadTransport,

		NIXLDeviceReceiveBytes: o.NIXLDeviceReceive,
		NIXLDeviceStaging:      o.NIXLDeviceStaging,
	}, nil
}

// EndpointDefaults returns, as a JSON object, the settings of a producer or consumer whose options leave
// everything unset: connector.GetDefaultOptions and transport.GetDefaultOptions, the one place they are stated.
func EndpointDefaults() (js string, err error) {
	defer recoverInto(&err)
	st, err := settingsOf(connector.GetDefaultOptions())
	if err != nil {
		return "", wrap(err)
	}
	return toJSON(st)
}

// EndpointOptions validates optsJSON (the options ProducerNew and ConsumerNew take) and returns, as a JSON
// object, the settings an endpoint built from it runs with: the given fields, and the defaults for the rest.
func EndpointOptions(optsJSON string) (js string, err error) {
	defer recoverInto(&err)
	opts, err := endpointOpts(optsJSON)
	if err != nil {
		return "", wrap(err)
	}
	o := connector.GetDefaultOptions()
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return "", wrap(err)
		}
	}
	if err := o.Check(); err != nil {
		return "", wrap(err)
	}
	st, err := settingsOf(o)
	if err != nil {
		return "", wrap(err)
	}
	return toJSON(st)
}

func decodeJSON(js string, v any) error {
	if strings.TrimSpace(js) == "" {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", connector.ErrOption, err)
	}
	return nil
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// PlaneConnect connects to the control plane described by optsJSON (a JSON object; "{}" starts an embedded
// NATS server) and returns its handle.
func PlaneConnect(optsJSON string) (h int, err error) {
	defer recoverInto(&err)
	var po planeOptions
	if err := decodeJSON(optsJSON, &po); err != nil {
		return 0, wrap(err)
	}
	var opts []szn.Option
	if po.URL != "" {
		opts = append(opts, szn.WithURL(po.URL))
	}
	if po.Namespace != "" {
		opts = append(opts, szn.WithNamespace(po.Namespace))
	}
	if po.Name != "" {
		opts = append(opts, szn.WithName(po.Name))
	}
	if po.User != "" || po.Password != "" {
		opts = append(opts, szn.WithUserInfo(po.User, po.Password))
	}
	if po.Token != "" {
		opts = append(opts, szn.WithToken(po.Token))
	}
	if po.CredentialsFile != "" {
		opts = append(opts, szn.WithCredentials(po.CredentialsFile))
	}
	if po.NKeyFile != "" {
		opts = append(opts, szn.WithNKeyFile(po.NKeyFile))
	}
	if po.TLSCA != "" || po.TLSCert != "" || po.TLSKey != "" {
		opts = append(opts, szn.WithTLS(po.TLSCA, po.TLSCert, po.TLSKey))
	}
	if po.TimeoutS != nil {
		opts = append(opts, szn.WithTimeout(seconds(*po.TimeoutS)))
	}
	if po.HandoffTTLS != nil {
		opts = append(opts, szn.WithHandoffTTL(seconds(*po.HandoffTTLS)))
	}
	switch po.Storage {
	case "", "file":
	case "memory":
		opts = append(opts, szn.WithStorage(szn.MemoryStorage))
	default:
		return 0, wrap(fmt.Errorf("%w: storage %q (want file or memory)", connector.ErrOption, po.Storage))
	}
	if po.EmbeddedHost != "" || po.EmbeddedPort != nil || po.EmbeddedStore != "" {
		d := szn.GetDefaultOptions()
		host, port := d.EmbeddedHost, d.EmbeddedPort
		if po.EmbeddedHost != "" {
			host = po.EmbeddedHost
		}
		if po.EmbeddedPort != nil {
			port = *po.EmbeddedPort
		}
		opts = append(opts, szn.WithEmbeddedServer(host, port, po.EmbeddedStore))
	}
	p, err := szn.Connect(opts...)
	if err != nil {
		return 0, wrap(err)
	}
	return planes.put(p), nil
}

// PlaneClientURL is the URL other processes connect to (the embedded server's, or the external one's).
func PlaneClientURL(h int) (string, error) {
	p, err := planes.get(h)
	if err != nil {
		return "", wrap(err)
	}
	return p.ClientURL(), nil
}

// PlaneClose closes the plane (and its embedded server); it returns the planes still open. Close producers and
// consumers on it first.
func PlaneClose(h int) (int, error) {
	p, err := planes.get(h)
	if err != nil {
		return 0, wrap(err)
	}
	if err := planes.release(h); err != nil {
		return 0, wrap(err)
	}
	p.Close()
	return planes.len(), nil
}

func endpointOpts(js string) ([]connector.Option, error) {
	var eo endpointOptions
	if err := decodeJSON(js, &eo); err != nil {
		return nil, err
	}
	opts := []connector.Option{connector.WithEngineID(eo.EngineID), connector.WithRank(eo.Rank)}
	if eo.ListenAddr != nil {
		opts = append(opts, connector.WithListenAddr(*eo.ListenAddr))
	}
	if eo.AdvertiseAddr != nil {
		opts = append(opts, connector.WithAdvertiseAddr(*eo.AdvertiseAddr))
	}
	if eo.StagingBytes != nil {
		opts = append(opts, connector.WithStagingBytes(*eo.StagingBytes))
	}
	if eo.HandoffTTLS != nil {
		opts = append(opts, connector.WithHandoffTTL(seconds(*eo.HandoffTTLS)))
	}
	if eo.LoadTimeoutS != nil {
		opts = append(opts, connector.WithLoadTimeout(seconds(*eo.LoadTimeoutS)))
	}
	if eo.RecordWaitS != nil {
		opts = append(opts, connector.WithRecordWait(seconds(*eo.RecordWaitS)))
	}
	if eo.Bypass != nil {
		b, err := connector.ParseBypass(*eo.Bypass)
		if err != nil {
			return nil, err
		}
		opts = append(opts, connector.WithBypass(b))
	}
	if eo.Mode != nil {
		m, err := connector.ParseMode(*eo.Mode)
		if err != nil {
			return nil, err
		}
		opts = append(opts, connector.WithMode(m))
	}
	if eo.CodeTablePath != "" {
		t, err := codec.LoadCodeTable(eo.CodeTablePath)
		if err != nil {
			return nil, err
		}
		opts = append(opts, connector.WithCodeTable(t))
	}
	if eo.LinkRate != nil {
		opts = append(opts, connector.WithLinkRate(*eo.LinkRate))
	}
	switch {
	case eo.Codebook != 0 && eo.CodebookPath != "":
		return nil, fmt.Errorf("%w: give codebook or codebook_path, not both", connector.ErrOption)
	case eo.Codebook != 0:
		cb, err := codebooks.get(eo.Codebook)
		if err != nil {
			return nil, err
		}
		opts = append(opts, connector.WithCodebook(cb))
	case eo.CodebookPath != "":
		cb, err := codec.LoadCodebook(eo.CodebookPath)
		if err != nil {
			return nil, err
		}
		opts = append(opts, connector.WithCodebook(cb))
	}
	if eo.MaxInFlight != nil {
		opts = append(opts, connector.WithMaxInFlight(*eo.MaxInFlight))
	}
	var topts []transport.Option
	if eo.RateLimit != nil {
		topts = append(topts, transport.WithRateLimit(*eo.RateLimit))
	}
	if eo.Conns != nil {
		topts = append(topts, transport.WithConns(*eo.Conns))
	}
	if eo.IOTimeoutS != nil {
		topts = append(topts, transport.WithIOTimeout(seconds(*eo.IOTimeoutS)))
		// The same bound for reads over NIXL; the option validates it as transport's does.
		opts = append(opts, connector.WithNIXL(nixl.WithIOTimeout(seconds(*eo.IOTimeoutS))))
	}
	if eo.Transport != nil {
		opts = append(opts, connector.WithPayloadTransport(*eo.Transport))
	}
	if eo.NIXLDeviceReceiveBytes != nil {
		opts = append(opts, connector.WithNIXLDeviceReceive(*eo.NIXLDeviceReceiveBytes))
	}
	if eo.NIXLDeviceStaging != nil {
		opts = append(opts, connector.WithNIXLDeviceStaging(*eo.NIXLDeviceStaging))
	}
	if eo.TLSCA != "" || eo.TLSCert != "" || eo.TLSKey != "" {
		topts = append(topts, transport.WithTLSFiles(eo.TLSCA, eo.TLSCert, eo.TLSKey))
	}
	if eo.TLSServerName != "" {
		topts = append(topts, transport.WithTLSServerName(eo.TLSServerName))
	}
	if len(topts) > 0 {
		// transport's option errors carry no sentinel: check them here, so they surface as option errors
		t := transport.GetDefaultOptions()
		for _, opt := range topts {
			if err := opt(&t); err != nil {
				return nil, fmt.Errorf("%w: %v", connector.ErrOption, err)
			}
		}
		opts = append(opts, connector.WithTransport(topts...))
	}
	return opts, nil
}

// parseInts reads a comma-separated list of integers ("" is empty).
func parseInts(s string) ([]int, error) {
	s = strings.TrimSpace(strings.Trim(strings.TrimSpace(s), "[]"))
	if s == "" {
		return nil, nil
	}
	parts := strings.Split(s, ",")
	out := make([]int, len(parts))
	for i, p := range parts {
		v, err := strconv.ParseInt(strings.TrimSpace(p), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: %q is not an integer", errArgument, p)
		}
		out[i] = int(v)
	}
	return out, nil
}

func parseBases(s string) ([]uintptr, error) {
	v, err := parseInts(s)
	if err != nil {
		return nil, err
	}
	out := make([]uintptr, len(v))
	for i, b := range v {
		out[i] = uintptr(b)
	}
	return out, nil
}

func parseLayout(js string) (connector.Layout, error) {
	var l connector.Layout
	if strings.TrimSpace(js) == "" {
		return l, fmt.Errorf("%w: empty layout", connector.ErrLayout)
	}
	dec := json.NewDecoder(strings.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil {
		return l, fmt.Errorf("%w: %v", connector.ErrLayout, err)
	}
	return l, l.Validate()
}

func toJSON(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}

// LayoutFingerprint validates a layout (JSON of connector.Layout) and returns its fingerprint: what both sides
// of a handoff must agree on.
func LayoutFingerprint(layoutJSON string) (string, error) {
	l, err := parseLayout(layoutJSON)
	if err != nil {
		return "", wrap(err)
	}
	return l.Fingerprint(), nil
}

// NewHandoffID returns a fresh handoff id; with tensor parallelism the scheduler picks one for every rank.
func NewHandoffID() string { return connector.NewHandoffID() }

// NewHandoffSecret returns a fresh handoff secret, picked with the id: only the consumer given it (through the
// engine's request path, never the control plane) can fetch the handoff.
func NewHandoffSecret() string { return connector.NewHandoffSecret() }

// ProducerNew starts a producer (payload server) on plane and returns its handle.
func ProducerNew(plane int, optsJSON string) (h int, err error) {
	defer recoverInto(&err)
	return newEndpoint(producers, plane, optsJSON, connector.NewProducer)
}

// newEndpoint builds a producer or consumer on the plane behind handle plane and returns its handle.
func newEndpoint[T any](table *handles[T], plane int, optsJSON string, build func(connector.ControlPlane, ...connector.Option) (T, error)) (int, error) {
	p, err := planes.get(plane)
	if err != nil {
		return 0, wrap(err)
	}
	opts, err := endpointOpts(optsJSON)
	if err != nil {
		return 0, wrap(err)
	}
	e, err := build(p, opts...)
	if err != nil {
		return 0, wrap(err)
	}
	return table.put(e), nil
}

// ProducerAddr is where consumers fetch this producer's payloads.
func ProducerAddr(h int) (string, error) {
	p, err := producers.get(h)
	if err != nil {
		return "", wrap(err)
	}
	return p.Addr(), nil
}

// ProducerRegisterHostCache registers the rank's KV cache: a layout (JSON) and one host base address per layer
// (comma-separated). The memory must stay valid until the producer is closed or re-registered.
func ProducerRegisterHostCache(h int, layoutJSON, bases string) (n int, err error) {
	defer recoverInto(&err)
	return register(producers, h, layoutJSON, bases, (*connector.Producer).RegisterHostCache)
}

// register parses a layout and per-layer base addresses and hands them to fn on the endpoint behind h; it
// returns the number of bases.
func register[T any](table *handles[T], h int, layoutJSON, bases string, fn func(T, connector.Layout, []uintptr) error) (int, error) {
	e, err := table.get(h)
	if err != nil {
		return 0, wrap(err)
	}
	l, err := parseLayout(layoutJSON)
	if err != nil {
		return 0, wrap(err)
	}
	b, err := parseBases(bases)
	if err != nil {
		return 0, wrap(err)
	}
	return len(b), wrap(fn(e, l, b))
}

// ProducerBeginHandoff opens reqID's handoff of blocks (comma-separated) under handoffID and secret ("" for
// both picks a pair) and returns the handoff as JSON {"handoff_id", "secret", "producer_engine_id",
// "request_id"}. Layers follow with ProducerSaveLayer.
func ProducerBeginHandoff(h int, reqID, handoffID, secret, blocks string) (js string, err error) {
	defer recoverInto(&err)
	p, err := producers.get(h)
	if err != nil {
		return "", wrap(err)
	}
	b, err := parseInts(blocks)
	if err != nil {
		return "", wrap(err)
	}
	ho, err := p.BeginHandoff(reqID, handoffID, secret, b)
	if err != nil {
		return "", wrap(err)
	}
	return toJSON(ho)
}

// ProducerSaveLayer queues layer of reqID for encoding (layers in order, from 0); it does not wait.
func ProducerSaveLayer(h int, reqID string, layer int) (n int, err error) {
	defer recoverInto(&err)
	p, err := producers.get(h)
	if err != nil {
		return 0, wrap(err)
	}
	return layer, wrap(p.SaveLayer(reqID, layer))
}

// ProducerWaitSaved waits up to timeoutS seconds (≤ 0: no limit) until every layer of reqID is staged.
func ProducerWaitSaved(h int, reqID string, timeoutS float64) (n int, err error) {
	defer recoverInto(&err)
	p, err := producers.get(h)
	if err != nil {
		return 0, wrap(err)
	}
	ctx := context.Background()
	if timeoutS > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, seconds(timeoutS))
		defer cancel()
	}
	if err := p.WaitSaved(ctx, reqID); err != nil {
		return 0, wrap(fmt.Errorf("request %q: %w", reqID, err))
	}
	return 1, nil
}

// ProducerFinishedSending returns, as a JSON array, the requests whose blocks the engine may free since the
// last call.
func ProducerFinishedSending(h int) (string, error) {
	p, err := producers.get(h)
	if err != nil {
		return "", wrap(err)
	}
	ids := p.FinishedSending()
	if ids == nil {
		ids = []string{}
	}
	return toJSON(ids)
}

// ProducerStats returns the running totals as JSON (byte counts, escapes, times in seconds).
func ProducerStats(h int) (string, error) {
	p, err := producers.get(h)
	if err != nil {
		return "", wrap(err)
	}
	s := p.Stats()
	m := map[string]any{
		"handoffs": s.Handoffs, "failed": s.Failed, "raw_handoffs": s.RawHandoffs,
		"fast_handoffs": s.FastHandoffs, "high_ratio_handoffs": s.HighRatioHandoffs,
		"raw_bytes": s.RawBytes, "encoded_bytes": s.EncodedBytes,
		"escapes": s.Escapes, "elements": s.Elements, "encode_s": s.EncodeTime.Seconds(), "copy_s": s.CopyTime.Seconds(),
		"staging_in_use": p.StagingInUse(), "in_flight": p.InFlight(),
		"expired": s.Expired, "consumer_failed": s.ConsumerFailed, "complete_publish_failed": s.CompletePublishFailed,
		"staging_waits": s.StagingWaits, "staging_wait_s": s.StagingWait.Seconds(),
	}
	addRuntime(m)
	return toJSON(m)
}

// ProducerClose closes a producer; it returns the producers still open.
func ProducerClose(h int) (int, error) {
	p, err := producers.get(h)
	if err != nil {
		return 0, wrap(err)
	}
	if err := producers.release(h); err != nil {
		return 0, wrap(err)
	}
	return producers.len(), wrap(p.Close())
}

// ConsumerNew joins plane as a consumer and returns its handle.
func ConsumerNew(plane int, optsJSON string) (h int, err error) {
	defer recoverInto(&err)
	return newEndpoint(consumers, plane, optsJSON, connector.NewConsumer)
}

// ConsumerRegisterHostCache registers the rank's KV cache, as ProducerRegisterHostCache.
func ConsumerRegisterHostCache(h int, layoutJSON, bases string) (n int, err error) {
	defer recoverInto(&err)
	return register(consumers, h, layoutJSON, bases, (*connector.Consumer).RegisterHostCache)
}

// ConsumerLoad starts loading handoffID, proving its secret, into blocks (comma-separated) for reqID;
// ConsumerPoll reports the end.
func ConsumerLoad(h int, reqID, handoffID, secret, blocks string) (n int, err error) {
	defer recoverInto(&err)
	c, err := consumers.get(h)
	if err != nil {
		return 0, wrap(err)
	}
	b, err := parseInts(blocks)
	if err != nil {
		return 0, wrap(err)
	}
	return len(b), wrap(c.Load(reqID, connector.Handoff{ID: handoffID, Secret: secret}, b))
}

type pollResult struct {
	Done   []string      `json:"done"`
	Failed []pollFailure `json:"failed"`
}

type pollFailure struct {
	RequestID string `json:"request_id"`
	Kind      string `json:"kind"`
	Error     string `json:"error"`
}

// ConsumerPoll returns the loads that ended since the last call as JSON {"done": [ids], "failed":
// [{"request_id", "kind", "error"}]}.
func ConsumerPoll(h int) (string, error) {
	c, err := consumers.get(h)
	if err != nil {
		return "", wrap(err)
	}
	done, failed := c.Poll()
	r := pollResult{Done: done, Failed: make([]pollFailure, len(failed))}
	if r.Done == nil {
		r.Done = []string{}
	}
	for i, f := range failed {
		r.Failed[i] = pollFailure{RequestID: f.RequestID, Kind: kindOf(f.Err), Error: f.Err.Error()}
	}
	return toJSON(r)
}

// ConsumerStats returns the running totals as JSON (times in seconds).
func ConsumerStats(h int) (string, error) {
	c, err := consumers.get(h)
	if err != nil {
		return "", wrap(err)
	}
	s := c.Stats()
	m := map[string]any{
		"loads": s.Loads, "failed": s.Failed, "unverified": s.Unverified, "raw_bytes": s.RawBytes, "wire_bytes": s.WireBytes,
		"fetch_s": s.FetchTime.Seconds(), "decode_s": s.DecodeTime.Seconds(), "copy_s": s.CopyTime.Seconds(), "in_flight": c.InFlight(),
	}
	for k, n := range s.Failures { // failed loads by kind: failed_corrupt, failed_expired, …
		m["failed_"+connector.FailureKind(k).String()] = n
	}
	addRuntime(m)
	return toJSON(m)
}

// runtimeSamples are the Go runtime's figures the stats report (runtime/metrics: read without stopping the
// world): the heap's live and not yet swept objects, and the goroutines. Beside the process's RSS they tell
// Go's memory from the rest of the process's (CUDA, torch, Python).
var runtimeSamples = []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/sched/goroutines:goroutines"}}

// addRuntime adds go_heap_bytes and goroutines to m.
func addRuntime(m map[string]any) {
	s := make([]metrics.Sample, len(runtimeSamples))
	copy(s, runtimeSamples)
	metrics.Read(s)
	m["go_heap_bytes"] = s[0].Value.Uint64()
	m["goroutines"] = s[1].Value.Uint64()
}

// ConsumerClose closes a consumer (loads in flight fail); it returns the consumers still open.
func ConsumerClose(h int) (int, error) {
	c, err := consumers.get(h)
	if err != nil {
		return 0, wrap(err)
	}
	if err := consumers.release(h); err != nil {
		return 0, wrap(err)
	}
	return consumers.len(), wrap(c.Close())
}
