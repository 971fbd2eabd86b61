package nixl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/splitzip/splitzip/connector/transport"
)

// hostDevice is device memory for FetchDevice made of host memory, as the tests have no GPU: registered as
// DRAM, checksummed on the CPU, and counting the checksums asked for. The GPU's own (VRAM, the CRC kernel) is
// tested where there is one (connector's GPU tests, tests/gpu/transports.py).
type hostDevice struct {
	mem    []byte
	crcs   atomic.Int64
	crcErr error
}

func newHostDevice(t *testing.T, n int) *hostDevice {
	mem, unmap, err := MapHost(n)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, unmap()) })
	return &hostDevice{mem: mem}
}

func (d *hostDevice) base() uintptr { return uintptr(unsafe.Pointer(&d.mem[0])) }

// at is the n bytes at address p of the memory.
func (d *hostDevice) at(p uintptr, n int) []byte {
	off := int(p - d.base())
	return d.mem[off : off+n]
}

func (d *hostDevice) memory() DeviceMemory {
	return DeviceMemory{
		Region: Region{Addr: d.base(), Len: len(d.mem), Mem: MemDRAM},
		CRC32C: func(p uintptr, n int) (uint32, error) {
			d.crcs.Add(1)
			if d.crcErr != nil {
				return 0, d.crcErr
			}
			return crc32.Checksum(d.at(p, n), castagnoli), nil
		},
	}
}

// sink collects what FetchDevice hands over, checking that it lies in the device memory.
func (d *hostDevice) sink(t *testing.T, got map[int][]byte, mu *sync.Mutex) DeviceSink {
	return func(i int, p uintptr, n int, crc uint32) error {
		if n > 0 && (p < d.base() || p+uintptr(n) > d.base()+uintptr(len(d.mem))) {
			return fmt.Errorf("chunk %d handed over at %#x, outside the device memory", i, p)
		}
		var b []byte
		if n > 0 {
			b = append([]byte(nil), d.at(p, n)...)
		}
		if crc32.Checksum(b, castagnoli) != crc {
			return fmt.Errorf("chunk %d: the CRC handed to the sink is not the data's", i)
		}
		mu.Lock()
		defer mu.Unlock()
		got[i] = b
		return nil
	}
}

func TestFetchDeviceBitExact(t *testing.T) {
	p := newPair(t, nil)
	d := newHostDevice(t, 8<<20)
	_, err := p.cli.FetchDevice(context.Background(), nil, "x", func(int, uintptr, int, uint32) error { return nil })
	require.ErrorIs(t, err, ErrOption, "no device memory yet")
	require.False(t, p.cli.HasDeviceMemory())
	require.NoError(t, p.cli.UseDeviceMemory(d.memory()))
	require.True(t, p.cli.HasDeviceMemory())
	require.ErrorIs(t, p.cli.UseDeviceMemory(d.memory()), ErrOption, "one device memory a client")

	sizes := []int{1 << 20, 0, 3 << 20, 4097, 5}
	want := randomChunks(11, sizes...)
	chunks := make([][]byte, len(want))
	for i, w := range want {
		if len(w) > 0 {
			b, err := p.srv.Alloc(len(w))
			require.NoError(t, err)
			copy(b, w)
			chunks[i] = b
		}
	}
	id := transport.NewHandoffID()
	require.NoError(t, p.srv.Offer(id, transport.NewBytesPayload(chunks, nil)))
	loc, err := p.srv.Locator(id)
	require.NoError(t, err)
	got, mu := map[int][]byte{}, &sync.Mutex{}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := p.cli.FetchDevice(ctx, loc, id, d.sink(t, got, mu))
	require.NoError(t, err)
	require.Len(t, got, len(want))
	for i, w := range want {
		require.True(t, bytes.Equal(w, got[i]), "chunk %d differs", i)
	}
	require.Equal(t, len(want), st.Chunks)
	require.EqualValues(t, len(want)-1, d.crcs.Load(), "every non-empty chunk verified in device memory")
	require.Zero(t, p.cli.dev.arena.InUse(), "the chunks' buffers went back")
	require.Zero(t, p.cli.arena.InUse(), "the table's buffer went back")
	eventually(t, "the payload released", func() bool { return p.srv.Pending() == 0 })
}

func TestFetchDeviceFailures(t *testing.T) {
	p := newPair(t, nil)
	d := newHostDevice(t, 4<<20)
	require.NoError(t, p.cli.UseDeviceMemory(d.memory()))
	offer := func(chunks ...[]byte) (string, []byte) {
		staged := make([][]byte, len(chunks))
		for i, c := range chunks {
			b, err := p.srv.Alloc(len(c))
			require.NoError(t, err)
			copy(b, c)
			staged[i] = b
		}
		sp := transport.NewStreamPayload(len(chunks), nil)
		for i, b := range staged {
			crc := crc32.Checksum(chunks[i], castagnoli)
			if i == 1 {
				b[100] ^= 8 // flipped after its CRC was taken
			}
			require.NoError(t, sp.PutWithCRC(i, b, crc))
		}
		id := transport.NewHandoffID()
		require.NoError(t, p.srv.Offer(id, sp))
		loc, err := p.srv.Locator(id)
		require.NoError(t, err)
		return id, loc
	}
	fetch := func(id string, loc []byte) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := p.cli.FetchDevice(ctx, loc, id, d.sink(t, map[int][]byte{}, &sync.Mutex{}))
		return err
	}
	want := randomChunks(12, 1<<20, 1<<20)

	id, loc := offer(want...)
	require.ErrorIs(t, fetch(id, loc), transport.ErrChecksum, "a flipped bit, found in device memory")

	d.crcErr = errors.New("the GPU is gone")
	id, loc = offer(want...)
	err := fetch(id, loc)
	require.ErrorIs(t, err, transport.ErrSink, "a checksum that cannot be computed fails the fetch")
	require.ErrorContains(t, err, "the GPU is gone")
	d.crcErr = nil

	big := randomChunks(13, 5<<20)
	id, loc = offer(big...)
	require.ErrorIs(t, fetch(id, loc), transport.ErrTooLarge, "a chunk larger than the device memory")
	require.Zero(t, p.cli.dev.arena.InUse())
}

// devicePayload stages its chunks in the server's device memory (a DeviceChunker), some of them in host
// memory instead.
type devicePayload struct {
	*transport.BytesPayload
	at    []uintptr // chunk i's address in device memory; 0: in host memory (BytesPayload's)
	lens  []int
	crcs  []uint32
	named map[int]uintptr // addresses DeviceChunk gives instead of at's
}

func (d *devicePayload) DeviceChunk(_ context.Context, i int) (uintptr, int, uint32, bool, error) {
	if d.at[i] == 0 {
		return 0, 0, 0, false, nil
	}
	if p, ok := d.named[i]; ok {
		return p, d.lens[i], d.crcs[i], true, nil
	}
	return d.at[i], d.lens[i], d.crcs[i], true, nil
}

// Chunks a producer stages in its device memory are read there (rows naming that memory), into a consumer's
// host or device memory alike, bit for bit; a chunk named outside the registered device memory fails the
// handoff on the producer's side.
func TestServerDeviceChunks(t *testing.T) {
	p := newPair(t, nil)
	pd := newHostDevice(t, 16<<20)
	require.NoError(t, p.srv.UseDeviceMemory(pd.memory()))
	cd := newHostDevice(t, 8<<20)
	require.NoError(t, p.cli.UseDeviceMemory(cd.memory()))

	want := randomChunks(21, 2<<20, 0, 1<<20, 4097, 3<<20)
	offer := func(named map[int]uintptr) (string, []byte) {
		dp := &devicePayload{at: make([]uintptr, len(want)), lens: make([]int, len(want)), crcs: make([]uint32, len(want)), named: named}
		host := make([][]byte, len(want))
		for i, w := range want {
			if i%2 == 1 || len(w) == 0 { // host memory
				host[i] = w
				continue
			}
			at, err := p.srv.AllocDevice(len(w))
			require.NoError(t, err)
			copy(pd.at(at, len(w)), w)
			dp.at[i], dp.lens[i], dp.crcs[i] = at, len(w), crc32.Checksum(w, castagnoli)
		}
		dp.BytesPayload = transport.NewBytesPayload(host, func(error) {
			for _, at := range dp.at {
				if at != 0 {
					p.srv.FreeDevice(at)
				}
			}
		})
		id := transport.NewHandoffID()
		require.NoError(t, p.srv.Offer(id, dp))
		loc, err := p.srv.Locator(id)
		require.NoError(t, err)
		return id, loc
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	id, loc := offer(nil)
	var c collect
	_, err := p.cli.Fetch(ctx, loc, id, c.sink)
	require.NoError(t, err)
	for i, w := range want {
		require.True(t, bytes.Equal(w, c.got[i]), "chunk %d into host memory", i)
	}
	id, loc = offer(nil)
	got, mu := map[int][]byte{}, &sync.Mutex{}
	_, err = p.cli.FetchDevice(ctx, loc, id, cd.sink(t, got, mu))
	require.NoError(t, err)
	for i, w := range want {
		require.True(t, bytes.Equal(w, got[i]), "chunk %d into device memory", i)
	}
	eventually(t, "device buffers freed on release", func() bool { return p.srv.Pending() == 0 && p.srv.dev.InUse() == 0 })

	// A chunk said to lie in device memory that is not the registered one.
	id, loc = offer(map[int]uintptr{0: pd.base() + uintptr(len(pd.mem)) - 4096}) // runs past the end
	_, err = p.cli.Fetch(ctx, loc, id, (&collect{}).sink)
	require.ErrorIs(t, err, transport.ErrProducer)
	require.ErrorContains(t, err, "outside the registered device memory")
}
