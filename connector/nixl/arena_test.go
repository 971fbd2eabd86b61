package nixl

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestArenaFirstFitCoalesces(t *testing.T) {
	mem, unmap, err := MapHost(1 << 20)
	require.NoError(t, err)
	defer unmap()
	a := NewArena(mem)
	require.Equal(t, 1<<20, a.Size())
	var bufs [][]byte
	for range 4 {
		b, err := a.Alloc(256 << 10)
		require.NoError(t, err)
		require.Len(t, b, 256<<10)
		require.True(t, a.Contains(b))
		bufs = append(bufs, b)
	}
	_, err = a.Alloc(1)
	require.ErrorIs(t, err, ErrArena, "a full arena")
	// Free the middle two: one 512 KiB span, enough for a 300 KiB buffer only after they merge.
	a.Free(bufs[1])
	_, err = a.Alloc(300 << 10)
	require.ErrorIs(t, err, ErrArena)
	a.Free(bufs[2])
	b, err := a.Alloc(300 << 10)
	require.NoError(t, err)
	require.Equal(t, &bufs[1][0], &b[0], "first fit reuses the lowest span")
	require.Equal(t, 2*(256<<10)+300<<10, a.InUse())
	for _, x := range [][]byte{bufs[0], bufs[3], b} {
		a.Free(x)
	}
	require.Zero(t, a.InUse())
	whole, err := a.Alloc(1 << 20)
	require.NoError(t, err, "everything merged back into one span")
	require.False(t, a.Contains(make([]byte, 8)))
	require.Panics(t, func() { a.Free(whole[arenaAlign:]) }, "freeing what was not handed out")
}

func TestArenaAllocWait(t *testing.T) {
	mem, unmap, err := MapHost(1 << 20)
	require.NoError(t, err)
	defer unmap()
	a := NewArena(mem)
	b, err := a.Alloc(900 << 10)
	require.NoError(t, err)
	go func() { time.Sleep(20 * time.Millisecond); a.Free(b) }()
	c, err := a.AllocWait(context.Background(), 512<<10)
	require.NoError(t, err, "waits for the free")
	a.Free(c)
	_, err = a.AllocWait(context.Background(), 2<<20)
	require.ErrorIs(t, err, ErrArena, "larger than the arena: fails at once")
	held, err := a.Alloc(1 << 20)
	require.NoError(t, err)
	defer a.Free(held)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err = a.AllocWait(ctx, 4096)
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

func TestStatusNames(t *testing.T) {
	require.Equal(t, "nixl: NIXL_CAPI_ERROR_BACKEND", StatusBackend.Error())
	require.Equal(t, "nixl_capi_status(-99)", Status(-99).String())
}

// TestNoLibrary runs a process in which the library cannot be found: every entry point fails with
// ErrNoLibrary and a message that says what to install, and nothing panics.
func TestNoLibrary(t *testing.T) {
	if os.Getenv("SPLITZIP_NIXL_NOLIB") != "" {
		err := Load()
		if err == nil { // installed system-wide, where the search finds it anyway
			fmt.Println("NIXL-FOUND-ELSEWHERE", LibraryPath())
			return
		}
		require.ErrorIs(t, err, ErrNoLibrary)
		require.Contains(t, err.Error(), "pip install nixl-cu13")
		_, err = NewServer("x")
		require.ErrorIs(t, err, ErrNoLibrary)
		_, err = NewClient("y")
		require.ErrorIs(t, err, ErrNoLibrary)
		require.False(t, Loaded())
		require.Empty(t, LibraryPath())
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestNoLibrary$")
	cmd.Env = []string{"SPLITZIP_NIXL_NOLIB=1", libraryEnv + "=/nonexistent/libnixl_capi.so", "PATH=" + os.Getenv("PATH"),
		"HOME=/nonexistent", "PYENV_ROOT=/nonexistent"}
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	if strings.Contains(string(out), "NIXL-FOUND-ELSEWHERE") {
		t.Skipf("this machine has NIXL where the search always looks: %s", out)
	}
}

func TestRegionArenaHandsOutAddresses(t *testing.T) {
	// Memory this process may not dereference (a GPU's): only its addresses are handed out.
	a := NewRegionArena(Region{Addr: 0x7f0000000100, Len: 1 << 20, Mem: MemVRAM, Device: 1})
	require.Equal(t, Region{Addr: 0x7f0000000100, Len: 1 << 20, Mem: MemVRAM, Device: 1}, a.Region())
	_, err := a.Alloc(100)
	require.ErrorIs(t, err, ErrArena, "no byte slices of VRAM")
	p, err := a.AllocAddr(1000)
	require.NoError(t, err)
	require.Equal(t, uintptr(0x7f0000000100), p)
	q, err := a.AllocAddrWait(context.Background(), 5000)
	require.NoError(t, err)
	require.Equal(t, p+1024, q, "first fit, 256-byte units")
	require.Equal(t, 1024+5120, a.InUse())
	a.FreeAddr(p)
	a.FreeAddr(q)
	require.Zero(t, a.InUse())
	require.Panics(t, func() { a.FreeAddr(q) })
	_, err = a.AllocAddrWait(context.Background(), 2<<20)
	require.ErrorIs(t, err, ErrArena, "larger than the arena fails at once")
}
