package connector

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"

	"github.com/splitzip/splitzip/connector/nixl"
	"github.com/splitzip/splitzip/connector/transport"
	"github.com/splitzip/splitzip/kernels/cuda"
	szn "github.com/splitzip/splitzip/nats"
)

// payloadServer serves a producer's handoffs to consumers: SplitZip's TCP protocol, or NIXL.
type payloadServer interface {
	Offer(id string, secret []byte, p transport.Payload) error
	Withdraw(id string) bool
	Close() error
	// addr is what the shard records name as the payload's source.
	addr() string
	// locate says how consumers reach handoff id, for its records (the TCP server: nothing beyond addr), sealed
	// under the handoff's secret where it opens the payload to whoever holds it.
	locate(id string, secret []byte) (transport string, locator json.RawMessage, err error)
	// stagingAllocator is where staging memory for a cache with allocator a comes from; done, called once
	// staging has switched to it, frees what the previous registration held.
	stagingAllocator(a allocator, budget int64) (alloc allocator, done func(), err error)
	// freeMemory returns the staging memory once staging is closed.
	freeMemory()
}

// newPayloadServer starts the producer's payload server of the configured transport.
func newPayloadServer(o Options, onTransfer func(transport.Stats)) (payloadServer, error) {
	if o.PayloadTransport == TransportNIXL {
		opts := append([]nixl.Option{nixl.WithHandoffTTL(o.HandoffTTL), nixl.WithOnTransfer(onTransfer)}, o.NIXL...)
		srv, err := nixl.NewServer(agentName(o, "p"), opts...)
		if err != nil {
			return nil, fmt.Errorf("payload transport nixl: %w", err)
		}
		return &nixlServer{srv: srv}, nil
	}
	topts := append([]transport.Option{
		transport.WithHandoffTTL(o.HandoffTTL),
		transport.WithMaxTransfers(o.MaxInFlight),
		transport.WithOnTransfer(onTransfer),
	}, o.Transport...)
	srv, err := transport.Listen(o.ListenAddr, topts...)
	if err != nil {
		return nil, err
	}
	t := &tcpServer{Server: srv, advertise: o.AdvertiseAddr}
	if t.advertise == "" {
		t.advertise = srv.Addr().String()
		if host, port, _ := net.SplitHostPort(t.advertise); host == "::" || host == "0.0.0.0" {
			return nil, errors.Join(srv.Close(), optErr("listening on %s: set an advertise address consumers can dial (port %s)", t.advertise, port))
		}
	}
	return t, nil
}

// agentName names this engine's NIXL agent: the engine, the rank, the side, and a random suffix, so that a
// restarted engine is a new agent to its peers.
func agentName(o Options, side string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-r%d-%s-%s", o.EngineID, o.Rank, side, hex.EncodeToString(b[:]))
}

// tcpServer is connector/transport's server.
type tcpServer struct {
	*transport.Server
	advertise string
}

func (t *tcpServer) addr() string { return t.advertise }

func (t *tcpServer) locate(string, []byte) (string, json.RawMessage, error) { return "", nil, nil }

func (t *tcpServer) stagingAllocator(a allocator, _ int64) (allocator, func(), error) {
	return a, func() {}, nil
}

func (t *tcpServer) freeMemory() {}

// nixlServer is connector/nixl's server. Staging is one arena registered with NIXL (consumers read frames
// where they were encoded): StagingBytes and a quarter more, for the chunk tables and against fragmentation,
// from the cache's allocator (pinned memory for a GPU cache) or mapped for a host cache.
type nixlServer struct {
	srv   *nixl.Server
	arena []byte
	free  func() // returns arena's memory
}

func (n *nixlServer) Offer(id string, _ []byte, p transport.Payload) error { return n.srv.Offer(id, p) }
func (n *nixlServer) Withdraw(id string) bool                              { return n.srv.Withdraw(id) }
func (n *nixlServer) Close() error                                         { return n.srv.Close() }
func (n *nixlServer) addr() string                                         { return "nixl:" + n.srv.Agent().Name() }

// locate seals the handoff's NIXL locator under its secret: the locator holds the producer agent's metadata
// (its registered memory's keys) and where the chunk table lies, which let any NIXL peer read the payload
// with one-sided reads, so only the consumer the handoff is addressed to may open it (access.go).
func (n *nixlServer) locate(id string, secret []byte) (string, json.RawMessage, error) {
	loc, err := n.srv.Locator(id)
	if err != nil {
		return "", nil, err
	}
	sealed, err := sealLocator(loc, secret, id)
	return szn.PayloadNIXL, sealed, err
}

func (n *nixlServer) stagingAllocator(a allocator, budget int64) (allocator, func(), error) {
	size := int(budget + budget/4 + 1<<20)
	var mem []byte
	var free func()
	if _, host := a.(goAllocator); host {
		m, unmap, err := nixl.MapHost(size)
		if err != nil {
			return nil, nil, err
		}
		mem, free = m, func() { _ = unmap() }
	} else {
		m, err := a.alloc(size)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: NIXL staging of %d bytes: %w", ErrStagingFull, size, err)
		}
		mem, free = m, func() { a.free(m) }
	}
	if err := n.srv.UseArena(mem); err != nil {
		free()
		return nil, nil, err
	}
	old := n.free
	n.arena, n.free = mem, free
	return nixlAllocator{n.srv}, func() {
		if old != nil {
			old()
		}
	}, nil
}

func (n *nixlServer) freeMemory() {
	if n.free != nil {
		n.free()
		n.free, n.arena = nil, nil
	}
}

// nixlAllocator hands out staging buffers from the NIXL server's registered arena.
type nixlAllocator struct{ srv *nixl.Server }

func (a nixlAllocator) alloc(n int) ([]byte, error) { return a.srv.Alloc(n) }
func (a nixlAllocator) free(b []byte)               { a.srv.Free(b) }

// ucxCUDAIPCReads is UCX's switch for reads (gets) of GPU memory through CUDA IPC. UCX turns them off where it
// finds no NVLink, two engines sharing one GPU included, and then serves every read of GPU memory over TCP in
// software, at 0.5–1 GB/s against tens of GB/s. A consumer reads every chunk, and producers may stage theirs in
// GPU memory, so it turns them on unless the environment already says.
const ucxCUDAIPCReads = "UCX_CUDA_IPC_ENABLE_GET_ZCOPY"

// enableCUDAIPCReads sets ucxCUDAIPCReads to y where the process's environment does not set it, before UCX
// reads its configuration (the agent's creation), and says so in log.
func enableCUDAIPCReads(log *slog.Logger) {
	if cuda.Getenv(ucxCUDAIPCReads) != "" {
		return
	}
	if err := os.Setenv(ucxCUDAIPCReads, "y"); err != nil {
		log.Warn("could not turn UCX's CUDA IPC reads on; without NVLink UCX reads GPU memory over TCP", "env", ucxCUDAIPCReads, "err", err)
		return
	}
	log.Info("UCX's CUDA IPC reads turned on (set the variable to keep UCX's default)", "env", ucxCUDAIPCReads+"=y")
}

// newPayloadClient makes the consumer's NIXL client when the options ask for NIXL (TCP needs none).
func newPayloadClient(o Options, log *slog.Logger) (*nixl.Client, error) {
	if o.PayloadTransport != TransportNIXL {
		return nil, nil
	}
	enableCUDAIPCReads(log)
	cli, err := nixl.NewClient(agentName(o, "c"), o.NIXL...)
	if err != nil {
		return nil, fmt.Errorf("payload transport nixl: %w", err)
	}
	return cli, nil
}

// fetchPayload fetches a handoff's frames the way its record says: over NIXL into GPU memory when dsink is
// given, else into host memory for sink.
func (c *Consumer) fetchPayload(ctx context.Context, rec *shardRecord, id string, secret []byte, sink transport.SinkCRC, dsink nixl.DeviceSink) (transport.Stats, error) {
	switch rec.Transport {
	case "", szn.PayloadTCP:
		return transport.FetchCRC(ctx, rec.Addr, id, secret, sink, c.o.Transport...)
	case szn.PayloadNIXL:
		if c.nixl == nil {
			return transport.Stats{}, fmt.Errorf("%w: the producer serves this handoff over NIXL; give the consumer the payload transport nixl too (WithPayloadTransport)", ErrMismatch)
		}
		loc, err := openLocator(rec.Locator, secret, id)
		if err != nil {
			return transport.Stats{}, err
		}
		if dsink != nil {
			return c.nixl.FetchDevice(ctx, loc, id, dsink)
		}
		return c.nixl.Fetch(ctx, loc, id, sink)
	}
	return transport.Stats{}, fmt.Errorf("%w: payload transport %q", ErrMismatch, rec.Transport)
}
