package nixl

import (
	"bytes"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
)

func hostRegion(b []byte) Region {
	return Region{Addr: uintptr(unsafe.Pointer(&b[0])), Len: len(b), Mem: MemDRAM}
}

// waitXfer polls x until it is done or fails.
func waitXfer(t *testing.T, x *Xfer) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		done, err := x.Poll()
		require.NoError(t, err)
		if done {
			break
		}
		require.True(t, time.Now().Before(deadline), "transfer still in progress after 10 s")
		time.Sleep(50 * time.Microsecond)
	}
	require.NoError(t, x.Release())
}

func TestAgentReadAndNotify(t *testing.T) {
	prod, cons := newTestAgent(t), newTestAgent(t)
	src := make([]byte, 3<<20)
	for i := range src {
		src[i] = byte(i*131 + i>>9)
	}
	dst := make([]byte, len(src))
	require.NoError(t, prod.Register(hostRegion(src)))
	require.NoError(t, cons.Register(hostRegion(dst)))
	md, err := prod.Metadata()
	require.NoError(t, err)
	name, err := cons.LoadRemote(md)
	require.NoError(t, err)
	require.Equal(t, prod.Name(), name)

	// Two regions in one request, the second from an offset: each lands where it was asked to.
	x, err := cons.Read(name, []Region{hostRegion(dst[:1<<20]), hostRegion(dst[2<<20:])},
		[]Region{hostRegion(src[:1<<20]), hostRegion(src[2<<20:])})
	require.NoError(t, err)
	waitXfer(t, x)
	require.True(t, bytes.Equal(src[:1<<20], dst[:1<<20]))
	require.True(t, bytes.Equal(src[2<<20:], dst[2<<20:]))
	require.Equal(t, make([]byte, 1<<20), dst[1<<20:2<<20], "bytes not asked for were written")

	require.NoError(t, cons.Notify(name, []byte("hello")))
	var got []Notification
	for deadline := time.Now().Add(5 * time.Second); len(got) == 0 && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		n, err := prod.Notifications()
		require.NoError(t, err)
		got = append(got, n...)
	}
	require.Equal(t, []Notification{{From: cons.Name(), Msg: []byte("hello")}}, got)

	// Memory the peer never registered cannot be read.
	other := make([]byte, 4096)
	_, err = cons.Read(name, []Region{hostRegion(dst[:4096])}, []Region{hostRegion(other)})
	require.ErrorIs(t, err, ErrCall)
}
