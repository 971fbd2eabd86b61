package nixl

import (
	"context"
	"fmt"

	"github.com/splitzip/splitzip/connector/transport"
)

// DeviceMemory is memory a [Client] reads chunks into instead of its host memory: typically a GPU's, so that
// chunks land where they are decoded and no host copy is made on the consumer. The caller allocates it, keeps
// it allocated until Client.Close returns (and, while Client.Leaked is not zero, after: a read that could not
// be cancelled may still write it), and computes checksums there.
type DeviceMemory struct {
	// Region is the memory, registered with NIXL as it is: Mem MemVRAM and Device the CUDA ordinal for GPU
	// memory (UCX reads into it with cuda_copy, cuda_ipc or GPUDirect RDMA, whichever it has).
	Region Region
	// CRC32C returns the CRC-32C (Castagnoli) of the n bytes at p, an address in Region, computed where they
	// lie (on the GPU: kernels.Codec.CRC32CAsync). An error fails the fetch.
	CRC32C func(p uintptr, n int) (uint32, error)
}

// DeviceSink receives a chunk that FetchDevice read and verified: its n bytes at p in the client's device
// memory, valid only during the call, and its CRC-32C. It may be called concurrently, in no particular order.
type DeviceSink func(i int, p uintptr, n int, crc uint32) error

// deviceRecv is a client's device memory: its arena and checksum.
type deviceRecv struct {
	arena *Arena
	crc   func(p uintptr, n int) (uint32, error)
}

// UseDeviceMemory registers m as the memory FetchDevice reads chunks into (at least Window chunks of the
// largest size should fit). A client takes one; fetches into host memory (Fetch) go on as before.
func (c *Client) UseDeviceMemory(m DeviceMemory) error {
	switch {
	case m.Region.Addr == 0 || m.Region.Len <= arenaAlign:
		return fmt.Errorf("%w: device memory of %d bytes at %#x", ErrOption, m.Region.Len, m.Region.Addr)
	case m.CRC32C == nil:
		return fmt.Errorf("%w: device memory without a CRC32C function", ErrOption)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closed:
		return ErrClosed
	case c.dev != nil:
		return fmt.Errorf("%w: the client has device memory already", ErrOption)
	}
	if err := c.ag.Register(m.Region); err != nil {
		return err
	}
	c.dev = &deviceRecv{arena: NewRegionArena(m.Region), crc: m.CRC32C}
	return nil
}

// HasDeviceMemory reports whether UseDeviceMemory gave the client memory for FetchDevice.
func (c *Client) HasDeviceMemory() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dev != nil
}

// FetchDevice is Fetch into the client's device memory (UseDeviceMemory): each chunk is read there straight
// from the producer's memory, verified there with DeviceMemory.CRC32C, and handed to sink by address.
// Failures are Fetch's.
func (c *Client) FetchDevice(ctx context.Context, locator []byte, id string, sink DeviceSink) (transport.Stats, error) {
	c.mu.Lock()
	dev := c.dev
	c.mu.Unlock()
	switch {
	case sink == nil:
		return transport.Stats{ID: id, Conns: 1}, fmt.Errorf("%w: nil sink", ErrOption)
	case dev == nil:
		return transport.Stats{ID: id, Conns: 1}, fmt.Errorf("%w: FetchDevice without device memory (UseDeviceMemory)", ErrOption)
	}
	return c.fetch(ctx, locator, id, receiver{arena: dev.arena, verify: dev.crc, deliver: sink})
}

// DeviceChunker is a payload (transport.Payload) some of whose chunks lie in the server's device memory
// (Server.UseDeviceMemory): the server publishes those by address, and consumers read them there.
type DeviceChunker interface {
	// DeviceChunk returns where chunk i lies in the server's device memory, its length and its CRC-32C,
	// blocking as Chunk does until the chunk is ready; ok is false for a chunk in host memory, which the
	// server then takes from Chunk.
	DeviceChunk(ctx context.Context, i int) (p uintptr, n int, crc uint32, ok bool, err error)
}

// deviceEntry is chunk i's row when dc stages it in the device memory dev; ok false when it is in host memory.
// A chunk over maxChunk bytes, or outside dev, is an error.
func deviceEntry(ctx context.Context, dc DeviceChunker, dev *Arena, i, maxChunk int) (e entry, ok bool, err error) {
	p, n, crc, ok, err := dc.DeviceChunk(ctx, i)
	if err != nil || !ok {
		return e, false, err
	}
	r := Region{}
	if dev != nil {
		r = dev.Region()
	}
	switch {
	case dev == nil:
		return e, false, fmt.Errorf("a %d-byte chunk in device memory, but the server has none (UseDeviceMemory)", n)
	case n < 0 || n > maxChunk || n > 1<<32-1:
		return e, false, fmt.Errorf("%d bytes, limit %d", n, maxChunk)
	case n > 0 && (p < r.Addr || p+uintptr(n) > r.Addr+uintptr(r.Len)):
		return e, false, fmt.Errorf("%d bytes at %#x lie outside the registered device memory", n, p)
	}
	return entry{addr: uint64(p), n: uint32(n), crc: crc, mem: r.Mem, dev: uint16(r.Device)}, true, nil
}
