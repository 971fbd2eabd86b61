package cuda

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// gpu returns a retained primary context of device 0, or skips the test
// with the driver's message.
func gpu(t testing.TB) *Context {
	t.Helper()
	if err := Init(); err != nil {
		t.Skipf("no GPU: %v", err)
	}
	n, err := DeviceCount()
	if err != nil || n == 0 {
		t.Skipf("no GPU: %d devices, %v", n, err)
	}
	c, err := PrimaryContext(0)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, c.Close()) })
	return c
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestResultStrings(t *testing.T) {
	assert.Equal(t, "CUDA_ERROR_OUT_OF_MEMORY", ErrorOutOfMemory.String())
	assert.Contains(t, ErrorOutOfMemory.Error(), "CUDA_ERROR_OUT_OF_MEMORY (2)")
	assert.Contains(t, ErrorOutOfMemory.Error(), "out of memory")
	assert.Equal(t, "CUDA_ERROR_12345", Result(12345).String())
	assert.Contains(t, Result(12345).Error(), "12345")
	assert.NoError(t, check(Success))
	var err error = ErrorInvalidPTX
	assert.True(t, errors.Is(err, ErrorInvalidPTX))
	for r, i := range resultNames {
		assert.NotEmpty(t, i.name, "code %d", r)
		assert.NotEmpty(t, i.desc, "code %d", r)
	}
}

func TestDynamicLibrary(t *testing.T) {
	l := NewDynamicLibrary("libc.so.6", RTLDLazy|RTLDLocal)
	_, err := l.Lookup("malloc")
	assert.Error(t, err, "lookup before open")
	require.NoError(t, l.Open())
	require.NoError(t, l.Open(), "open is idempotent")
	p, err := l.Lookup("malloc")
	require.NoError(t, err)
	assert.NotNil(t, p)
	_, err = l.Lookup("splitzip_no_such_symbol")
	require.Error(t, err)
	assert.Contains(t, err.Error(), `symbol "splitzip_no_such_symbol" not found`)
	require.NoError(t, l.Close())
	require.NoError(t, l.Close(), "close is idempotent")

	missing := NewDynamicLibrary("libsplitzip-no-such-library.so.1", RTLDLazy)
	err = missing.Open()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "libsplitzip-no-such-library.so.1")
	assert.NoError(t, missing.Close())
}

// Without a driver every entry point returns ErrNoDriver and nothing panics.
func TestNoDriver(t *testing.T) {
	if Init() == nil {
		t.Skip("driver present")
	}
	err := Init()
	require.ErrorIs(t, err, ErrNoDriver)
	assert.Contains(t, err.Error(), "splitzip: no CUDA driver (libcuda.so.1 not found): ")
	t.Log(err)
	assert.False(t, Loaded())
	assert.Empty(t, LibraryPath())
	_, err = DriverVersion()
	assert.ErrorIs(t, err, ErrNoDriver)
	_, err = DeviceCount()
	assert.ErrorIs(t, err, ErrNoDriver)
	_, err = GetDevice(0)
	assert.ErrorIs(t, err, ErrNoDriver)
	_, err = PrimaryContext(0)
	assert.ErrorIs(t, err, ErrNoDriver)
	_, err = Device(0).Name()
	assert.ErrorIs(t, err, ErrNoDriver)
	_, err = Device(0).TotalMem()
	assert.ErrorIs(t, err, ErrNoDriver)
	var c Context
	assert.ErrorIs(t, c.Do(func() error { return nil }), ErrNoDriver)
	_, err = c.Alloc(16)
	assert.ErrorIs(t, err, ErrNoDriver)
	_, err = c.LoadModule([]byte(addOnePTX))
	assert.ErrorIs(t, err, ErrNoDriver)
	_, err = c.NewStream(StreamNonBlocking)
	assert.ErrorIs(t, err, ErrNoDriver)
	// The error table still works without the library.
	assert.Equal(t, "CUDA_ERROR_ILLEGAL_ADDRESS", ErrorIllegalAddress.String())
}

func TestArgsPacking(t *testing.T) {
	a := NewArgs().U8(1).U32(2).U64(3).U32(4).Ptr(5).F32(1)
	assert.Equal(t, 4+4+8+4+4+8+4, a.Len())
	assert.Equal(t, uint32(2), binary.LittleEndian.Uint32(a.buf[4:]))
	assert.Equal(t, uint64(3), binary.LittleEndian.Uint64(a.buf[8:]))
	assert.Equal(t, uint32(4), binary.LittleEndian.Uint32(a.buf[16:]))
	assert.Equal(t, uint64(5), binary.LittleEndian.Uint64(a.buf[24:]))
	assert.Equal(t, 0, a.Reset().Len())
}

func TestDeviceInfo(t *testing.T) {
	c := gpu(t)
	d := c.Device()
	name, err := d.Name()
	require.NoError(t, err)
	assert.NotEmpty(t, name)
	v, err := DriverVersion()
	require.NoError(t, err)
	assert.GreaterOrEqual(t, v, 12000)
	mem, err := d.TotalMem()
	require.NoError(t, err)
	sms, err := d.Attribute(AttrMultiprocessorCount)
	require.NoError(t, err)
	l2, err := d.Attribute(AttrL2CacheSize)
	require.NoError(t, err)
	major, minor, err := d.ComputeCapability()
	require.NoError(t, err)
	free, total, err := c.MemGetInfo()
	require.NoError(t, err)
	assert.LessOrEqual(t, free, total)
	assert.Positive(t, sms)
	assert.GreaterOrEqual(t, major, 8)
	t.Logf("%s: driver %d (%s), sm_%d%d, %d SMs, L2 %d MiB, %d MiB (%d free)", name, v, LibraryPath(),
		major, minor, sms, l2>>20, mem>>20, free>>20)
}

func TestAllocCopyRoundTrip(t *testing.T) {
	c := gpu(t)
	s, err := c.NewStream(StreamNonBlocking)
	require.NoError(t, err)
	defer s.Close()
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 3, 1000, 1<<20 + 3} {
		src := randBytes(r, n)
		a, err := c.Alloc(n)
		require.NoError(t, err)
		b, err := c.Alloc(n)
		require.NoError(t, err)
		assert.Zero(t, uint64(a.Ptr())%256, "cuMemAlloc alignment")
		require.NoError(t, s.CopyHtoD(a.Ptr(), src))
		require.NoError(t, s.MemsetD8Async(b.Ptr(), 0xA5, n))
		require.NoError(t, s.MemcpyDtoDAsync(b.Ptr(), a.Ptr(), n))
		got := make([]byte, n)
		require.NoError(t, s.CopyDtoH(got, b.Ptr()))
		assert.True(t, bytes.Equal(src, got), "size %d", n)

		require.NoError(t, s.MemsetD8Async(b.Ptr(), 0x5A, n))
		require.NoError(t, s.CopyDtoH(got, b.Ptr()))
		assert.Equal(t, bytes.Repeat([]byte{0x5A}, n), got)
		require.NoError(t, a.Free())
		require.NoError(t, a.Free(), "free is idempotent")
		require.NoError(t, b.Free())
	}
	// Offsets within a buffer.
	buf, err := c.Alloc(64)
	require.NoError(t, err)
	defer buf.Free()
	require.NoError(t, s.MemsetD32Async(buf.Ptr(), 0x01020304, 16))
	require.NoError(t, s.CopyHtoD(buf.Ptr().Add(8), []byte{9, 9}))
	got := make([]byte, 12)
	require.NoError(t, s.CopyDtoH(got, buf.Ptr()))
	assert.Equal(t, []byte{4, 3, 2, 1, 4, 3, 2, 1, 9, 9, 2, 1}, got)

	_, err = c.Alloc(0)
	assert.ErrorIs(t, err, ErrorInvalidValue)
	_, err = c.Alloc(1 << 50)
	assert.ErrorIs(t, err, ErrorOutOfMemory)
}

func TestPinnedMemory(t *testing.T) {
	c := gpu(t)
	s, err := c.NewStream(StreamNonBlocking)
	require.NoError(t, err)
	defer s.Close()
	const n = 4<<20 + 5
	r := rand.New(rand.NewPCG(3, 4))

	in, err := c.HostAlloc(n, 0)
	require.NoError(t, err)
	defer in.Free()
	out, err := c.HostAlloc(n, HostAllocPortable)
	require.NoError(t, err)
	defer out.Free()
	copy(in.Bytes(), randBytes(r, n))
	dev, err := c.Alloc(n)
	require.NoError(t, err)
	defer dev.Free()
	require.NoError(t, s.MemcpyHtoDAsync(dev.Ptr(), in.Ptr(), n))
	require.NoError(t, s.MemcpyDtoHAsyncAddr(uintptr(out.Ptr()), dev.Ptr(), n))
	require.NoError(t, s.Synchronize())
	assert.True(t, bytes.Equal(in.Bytes(), out.Bytes()))

	// A registered Go slice.
	goMem := make([]byte, 1<<20)
	reg, err := c.HostRegister(goMem, 0)
	require.NoError(t, err)
	require.NoError(t, s.MemcpyDtoHAsync(reg.Ptr(), dev.Ptr(), reg.Len()))
	require.NoError(t, s.Synchronize())
	assert.True(t, bytes.Equal(in.Bytes()[:1<<20], goMem))
	require.NoError(t, reg.Free())
	require.NoError(t, reg.Free())
	require.NoError(t, in.Free())
	require.NoError(t, in.Free(), "free is idempotent")
}

func TestPointerAttributes(t *testing.T) {
	c := gpu(t)
	dev, err := c.Alloc(1 << 16)
	require.NoError(t, err)
	defer dev.Free()
	host, err := c.HostAlloc(1<<16, 0)
	require.NoError(t, err)
	defer host.Free()
	goMem := make([]byte, 1<<16)

	info, err := c.PointerAttributes(uintptr(dev.Ptr().Add(100)))
	require.NoError(t, err)
	assert.Equal(t, MemoryDevice, info.Type)
	assert.Equal(t, int(c.Device()), info.Device)
	assert.False(t, info.Managed)

	info, err = c.PointerAttributes(uintptr(host.Ptr()))
	require.NoError(t, err)
	assert.Equal(t, MemoryHost, info.Type)

	info, err = c.PointerAttributes(uintptr(unsafe.Pointer(&goMem[0])))
	require.NoError(t, err)
	assert.Equal(t, MemoryUnregistered, info.Type)
	assert.Equal(t, -1, info.Device)
}

func TestEvents(t *testing.T) {
	c := gpu(t)
	s, err := c.NewStream(StreamNonBlocking)
	require.NoError(t, err)
	defer s.Close()
	start, err := c.NewEvent(EventDefault)
	require.NoError(t, err)
	defer start.Close()
	end, err := c.NewEvent(EventDefault)
	require.NoError(t, err)
	defer end.Close()
	const n = 256 << 20
	a, err := c.Alloc(n)
	require.NoError(t, err)
	defer a.Free()
	b, err := c.Alloc(n)
	require.NoError(t, err)
	defer b.Free()
	require.NoError(t, s.MemsetD8Async(a.Ptr(), 1, n))
	require.NoError(t, start.Record(s))
	for range 10 {
		require.NoError(t, s.MemcpyDtoDAsync(b.Ptr(), a.Ptr(), n))
	}
	require.NoError(t, end.Record(s))
	require.NoError(t, end.Synchronize())
	done, err := end.Done()
	require.NoError(t, err)
	assert.True(t, done)
	ms, err := ElapsedMs(start, end)
	require.NoError(t, err)
	assert.Positive(t, ms)
	t.Logf("D2D copy: %.0f GB/s (read + written)", 2*10*n/float64(ms)/1e6)

	// Cross-stream ordering through an event.
	s2, err := c.NewStream(StreamNonBlocking)
	require.NoError(t, err)
	defer s2.Close()
	require.NoError(t, s.MemsetD8Async(a.Ptr(), 7, n))
	require.NoError(t, end.Record(s))
	require.NoError(t, s2.WaitEvent(end))
	got := make([]byte, 4)
	require.NoError(t, s2.CopyDtoH(got, a.Ptr().Add(n-4)))
	assert.Equal(t, []byte{7, 7, 7, 7}, got)
}

func loadAddOne(t *testing.T, c *Context) (*Module, *Function) {
	m, err := c.LoadModule([]byte(addOnePTX))
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, m.Close()) })
	f, err := m.Function("add_one")
	require.NoError(t, err)
	return m, f
}

func TestModuleLaunch(t *testing.T) {
	c := gpu(t)
	m, f := loadAddOne(t, c)
	assert.Equal(t, "add_one", f.Name())
	_, err := m.Function("no_such_kernel")
	assert.ErrorIs(t, err, ErrorNotFound)
	regs, err := f.Attribute(FuncNumRegs)
	require.NoError(t, err)
	assert.Positive(t, regs)
	occ, err := f.MaxActiveBlocksPerSM(256, 0)
	require.NoError(t, err)
	assert.Positive(t, occ)

	s, err := c.NewStream(StreamNonBlocking)
	require.NoError(t, err)
	defer s.Close()
	const n = 100003
	host := make([]byte, 4*n)
	for i := range n {
		binary.LittleEndian.PutUint32(host[4*i:], uint32(i))
	}
	d, err := c.Alloc(4 * n)
	require.NoError(t, err)
	defer d.Free()
	require.NoError(t, s.CopyHtoD(d.Ptr(), host))
	args := NewArgs().Ptr(d.Ptr()).U32(n).U32(7)
	require.NoError(t, f.Launch(s, Dim3{X: (n + 255) / 256}, Dim3{X: 256}, 0, args))
	require.NoError(t, s.CopyDtoH(host, d.Ptr()))
	for i := range n {
		require.Equal(t, uint32(i+7), binary.LittleEndian.Uint32(host[4*i:]), "element %d", i)
	}
	// The borrowed legacy default stream works too.
	def := c.StreamFromHandle(0)
	require.NoError(t, f.Launch(def, Dim3{X: (n + 255) / 256}, Dim3{X: 256}, 0, args))
	require.NoError(t, def.CopyDtoH(host[:4], d.Ptr()))
	assert.Equal(t, uint32(14), binary.LittleEndian.Uint32(host))
	require.NoError(t, def.Close())

	_, err = c.LoadModule([]byte(".version 7.0\n.target sm_80\n.address_size 64\n.visible .entry broken( { bogus; }"))
	require.Error(t, err)
	t.Log(err)
}

func TestGraphCapture(t *testing.T) {
	c := gpu(t)
	_, f := loadAddOne(t, c)
	s, err := c.NewStream(StreamNonBlocking)
	require.NoError(t, err)
	defer s.Close()
	const n = 4096
	d, err := c.Alloc(4 * n)
	require.NoError(t, err)
	defer d.Free()
	require.NoError(t, s.MemsetD32Async(d.Ptr(), 10, n))
	require.NoError(t, s.Synchronize())

	exec := captureGraph(t, c, s, func() error {
		if err := f.Launch(s, Dim3{X: n / 256}, Dim3{X: 256}, 0, NewArgs().Ptr(d.Ptr()).U32(n).U32(1)); err != nil {
			return err
		}
		return f.Launch(s, Dim3{X: n / 256}, Dim3{X: 256}, 0, NewArgs().Ptr(d.Ptr()).U32(n).U32(2))
	})
	for range 3 {
		require.NoError(t, exec.Launch(s))
	}
	got := make([]byte, 4*n)
	require.NoError(t, s.CopyDtoH(got, d.Ptr()))
	for i := range n {
		require.Equal(t, uint32(19), binary.LittleEndian.Uint32(got[4*i:]), "element %d", i)
	}
}

// captureGraph captures what enqueue puts on s into an instantiated graph (closed with the test). A
// thread-local capture begins and ends on one OS thread: Do pins it.
func captureGraph(t *testing.T, c *Context, s *Stream, enqueue func() error) *GraphExec {
	t.Helper()
	var g *Graph
	require.NoError(t, c.Do(func() error {
		if err := s.BeginCapture(CaptureThreadLocal); err != nil {
			return err
		}
		if err := enqueue(); err != nil {
			return err
		}
		var err error
		g, err = s.EndCapture()
		return err
	}))
	t.Cleanup(func() { assert.NoError(t, g.Close()) })
	exec, err := g.Instantiate()
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, exec.Close()) })
	return exec
}

func TestClosedObjects(t *testing.T) {
	d, err := GetDevice(0)
	if err != nil {
		t.Skipf("no GPU: %v", err)
	}
	c, err := d.RetainPrimaryContext()
	require.NoError(t, err)
	s, err := c.NewStream(0)
	require.NoError(t, err)
	require.NoError(t, s.Close())
	assert.ErrorIs(t, s.Synchronize(), ErrClosed)
	require.NoError(t, c.Close())
	require.NoError(t, c.Close())
	assert.ErrorIs(t, c.Synchronize(), ErrClosed)
}

// TestLaunchProgrammatic chains kernels with programmatic stream serialization, directly and in a captured
// graph: each launches before the previous one ends and waits for its writes, so every element must see every
// increment in order.
func TestLaunchProgrammatic(t *testing.T) {
	c := gpu(t)
	if major, _, err := c.Device().ComputeCapability(); err != nil || major < 9 {
		t.Skipf("programmatic dependent launch needs compute capability 9.0 (have %d, %v)", major, err)
	}
	require.True(t, CanLaunchWith())
	m, err := c.LoadModule([]byte(addOnePDLPTX))
	require.NoError(t, err)
	defer m.Close()
	f, err := m.Function("add_one_pdl")
	require.NoError(t, err)
	s, err := c.NewStream(StreamNonBlocking)
	require.NoError(t, err)
	defer s.Close()
	const n = 1 << 24
	d, err := c.Alloc(4 * n)
	require.NoError(t, err)
	defer d.Free()
	require.NoError(t, s.MemsetD32Async(d.Ptr(), 0, n))
	pdl := map[LaunchAttribute]int32{LaunchProgrammaticStreamSerialization: 1}
	launch := func(inc uint32) error {
		return f.LaunchWith(s, Dim3{X: n / 256}, Dim3{X: 256}, 0, NewArgs().Ptr(d.Ptr()).U32(n).U32(inc), pdl)
	}
	// The first launch follows a memset: a plain dependency.
	for i := range uint32(8) {
		require.NoError(t, launch(1<<i))
	}
	exec := captureGraph(t, c, s, func() error {
		for i := range uint32(4) {
			if err := launch(1 << (8 + i)); err != nil {
				return err
			}
		}
		return nil
	})
	require.NoError(t, exec.Launch(s))
	got := make([]byte, 4*n)
	require.NoError(t, s.CopyDtoH(got, d.Ptr()))
	for i := range n {
		if v := binary.LittleEndian.Uint32(got[4*i:]); v != 1<<12-1 {
			t.Fatalf("element %d is %#x, want %#x: a launch read before its predecessor's writes", i, v, 1<<12-1)
		}
	}
	err = f.LaunchWith(s, Dim3{X: 1}, Dim3{X: 32}, 0, nil, map[LaunchAttribute]int32{1: 0, 2: 0, 3: 0, 4: 0, 5: 0})
	assert.Error(t, err)
}

func TestGetenvReadsTheProcessEnvironment(t *testing.T) {
	t.Setenv("SPLITZIP_TEST_GETENV", "/a path/libx.so")
	require.Equal(t, "/a path/libx.so", Getenv("SPLITZIP_TEST_GETENV"))
	require.Empty(t, Getenv("SPLITZIP_TEST_GETENV_UNSET"))
}
