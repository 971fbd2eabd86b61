package connector

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A cache's regions are each layer's span from its lowest to its highest block byte, K and V, merged where
// layers touch or overlap (one tensor for all layers), whichever side of K the V region lies on.
func TestHostCacheRegions(t *testing.T) {
	l := smallLayout(4)
	l.Layers = 3
	bb := uintptr(l.BlockBytes())
	span := 2 * 4 * bb // K then V, 4 blocks each
	cases := []struct {
		name  string
		mod   func(*Layout)
		bases []uintptr
		want  []region
	}{
		{"apart", nil, []uintptr{1 << 30, 1 << 20, 1 << 24}, []region{{1 << 20, 1<<20 + span}, {1 << 24, 1<<24 + span}, {1 << 30, 1<<30 + span}}},
		{"touching layers merge", nil, []uintptr{1 << 20, 1<<20 + span, 1<<20 + 2*span}, []region{{1 << 20, 1<<20 + 3*span}}},
		{"V before K", func(l *Layout) { l.KVOffset = -int64(4 * bb) }, []uintptr{1 << 20, 1 << 24, 1 << 28},
			[]region{{1<<20 - 4*bb, 1<<20 + 4*bb}, {1<<24 - 4*bb, 1<<24 + 4*bb}, {1<<28 - 4*bb, 1<<28 + 4*bb}}},
		{"interleaved K,V per block", func(l *Layout) { l.BlockStride, l.KVOffset = 2*int64(bb), int64(bb) }, []uintptr{1 << 20, 1 << 20, 1 << 24},
			[]region{{1 << 20, 1<<20 + span}, {1 << 24, 1<<24 + span}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := l
			if tc.mod != nil {
				tc.mod(&l)
			}
			c, err := newHostCache(l, tc.bases)
			require.NoError(t, err)
			require.Equal(t, tc.want, c.regions())
		})
	}
}

// Only whole huge pages inside a region are advised: never memory beyond its ends.
func TestHugeInside(t *testing.T) {
	const mb2 = 2 << 20
	for _, tc := range []struct {
		in   region
		want region
		ok   bool
	}{
		{region{mb2, 3 * mb2}, region{mb2, 3 * mb2}, true},
		{region{mb2 + 1, 4*mb2 - 1}, region{2 * mb2, 3 * mb2}, true},
		{region{mb2 + 1, 3*mb2 - 1}, region{}, false}, // no whole page inside
		{region{mb2, 2*mb2 - 1}, region{}, false},
		{region{^uintptr(0) - 10, ^uintptr(0)}, region{}, false}, // rounding up would wrap
	} {
		got, ok := hugeInside(tc.in, mb2)
		require.Equal(t, tc.ok, ok, "%#x", tc.in)
		require.Equal(t, tc.want, got, "%#x", tc.in)
	}
}

// Registering a host cache puts its memory into huge pages where the kernel has them (checked in the kernel's
// own account, /proc/self/smaps), without changing a byte, and handoffs work on it; WithHugePages(false) leaves
// it alone.
func TestRegisterHostCacheHugePages(t *testing.T) {
	plane := startPlane(t)
	l := smallLayout(1024) // 12 MiB a layer: whole 2 MiB pages inside each
	l.Layers = 2
	src := newTestCache(t, l, true, 0)
	dst := newTestCache(t, l, false, 0)
	before := append([]byte(nil), src.mem[0]...)

	p, c := newPair(t, plane, nil, []Option{WithHugePages(false)})
	require.NoError(t, p.RegisterHostCache(src.layout, src.bases))
	require.NoError(t, c.RegisterHostCache(dst.layout, dst.bases))
	require.Equal(t, HugePageReport{}, c.Stats().HugePages, "WithHugePages(false) advises nothing")
	require.Eventually(t, func() bool { return p.Stats().HugePages.Done }, 30*time.Second, 5*time.Millisecond)
	rep := p.Stats().HugePages
	require.Equal(t, before, src.mem[0], "the advice changed the cache's contents")

	page, err := hugePageSize()
	if err != nil || !thpEnabled() {
		require.Error(t, rep.Err, "no THP here (%v), yet no refusal reported: %+v", err, rep)
		require.Positive(t, rep.Failures)
		t.Logf("no transparent huge pages here: %v", rep.Err)
	} else {
		if errors.Is(rep.Err, syscall.ENOMEM) {
			t.Skipf("the kernel had no free huge pages to collapse into (memory fragmented or under pressure): %v", rep.Err)
		}
		require.NoError(t, rep.Err)
		require.Zero(t, rep.Failures)
		// Each 12 MiB layer holds at least 5 whole 2 MiB pages, whatever its alignment.
		require.GreaterOrEqual(t, rep.Bytes, int64(l.Layers)*5*int64(page))
		require.Equal(t, rep.Bytes, rep.Collapsed)
		for i, m := range src.mem {
			in, ok := hugeInside(region{src.bases[i], src.bases[i] + uintptr(len(m))}, page)
			require.True(t, ok)
			require.GreaterOrEqual(t, anonHugeBytes(t, in.lo), int64(in.hi-in.lo), "layer %d is not in huge pages", i)
		}
	}

	blocks := []int{3, 500, 7, 1023, 0}
	h, err := p.Save("r", blocks)
	require.NoError(t, err)
	require.NoError(t, c.Load("r", h, blocks))
	require.NoError(t, waitLoad(t, c, "r"))
	requireSameBlocks(t, src, blocks, dst, blocks)

	// A second registration replaces the first; its background work ends with it. The producer lets go of the
	// handoff when the consumer's completion notice arrives, which may come after the load is done here.
	require.Eventually(t, func() bool { return p.InFlight() == 0 }, 10*time.Second, 5*time.Millisecond)
	require.NoError(t, p.RegisterHostCache(src.layout, src.bases))
	require.NoError(t, p.Close())
	runtime.KeepAlive(src)
}

// thpEnabled reports whether transparent huge pages are on ("always" or "madvise").
func thpEnabled() bool {
	b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	return err == nil && !strings.Contains(string(b), "[never]")
}

// anonHugeBytes is the AnonHugePages figure of the mapping that holds addr, from /proc/self/smaps.
func anonHugeBytes(t *testing.T, addr uintptr) int64 {
	f, err := os.Open("/proc/self/smaps")
	require.NoError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	in := false
	for sc.Scan() {
		line := sc.Text()
		var lo, hi uintptr
		if n, _ := fmt.Sscanf(line, "%x-%x ", &lo, &hi); n == 2 { // a mapping's first line
			in = lo <= addr && addr < hi
			continue
		}
		if in && strings.HasPrefix(line, "AnonHugePages:") {
			kb, err := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			require.NoError(t, err)
			return kb << 10
		}
	}
	require.NoError(t, sc.Err())
	t.Fatalf("no mapping holds %#x", addr)
	return 0
}
