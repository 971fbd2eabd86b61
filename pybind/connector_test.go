package pybind

import (
	"encoding/json"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// testCache is one rank's KV cache in the [2, num_blocks, block_size, heads, head] layout, one slice per layer.
type testCache struct {
	layers [][]byte
	layout map[string]any
}

func newTestCache(layers, blocks, blockSize, heads, head, tp int, seed uint64) *testCache {
	c := &testCache{}
	blockBytes := blockSize * heads * head * 2
	for l := range layers {
		c.layers = append(c.layers, bf16Data(2*blocks*blockBytes/2, seed+uint64(l)))
	}
	c.layout = map[string]any{
		"model": "test-model", "layers": layers, "block_size": blockSize, "kv_heads": heads, "head_size": head,
		"dtype": "bf16", "tp_size": tp, "num_blocks": blocks, "block_stride": blockBytes,
		"kv_offset": blocks * blockBytes,
	}
	return c
}

func (c *testCache) layoutJSON(t *testing.T) string {
	b, err := json.Marshal(c.layout)
	require.NoError(t, err)
	return string(b)
}

func (c *testCache) bases() string {
	s := make([]string, len(c.layers))
	for i, l := range c.layers {
		s[i] = strconv.FormatUint(uint64(addr(l)), 10)
	}
	return strings.Join(s, ",")
}

// block returns K (kv 0) or V (kv 1) of block b of layer l.
func (c *testCache) block(l, kv, b int) []byte {
	n := c.layout["block_stride"].(int)
	off := kv*c.layout["kv_offset"].(int) + b*n
	return c.layers[l][off : off+n]
}

func mustPlane(t *testing.T) int {
	t.Helper()
	h, err := PlaneConnect(`{"storage":"memory","namespace":"pybindtest"}`)
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = PlaneClose(h) })
	return h
}

func pollUntil(t *testing.T, c int, req string) (done bool, failure pollFailure) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		js, err := ConsumerPoll(c)
		require.NoError(t, err)
		var r pollResult
		require.NoError(t, json.Unmarshal([]byte(js), &r))
		for _, id := range r.Done {
			if id == req {
				return true, pollFailure{}
			}
		}
		for _, f := range r.Failed {
			if f.RequestID == req {
				return false, f
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("request %s neither done nor failed", req)
	return false, pollFailure{}
}

// Two TP ranks hand their shards over under one handoff id; each consumer rank gets its own shard, bit-exact,
// in different block ids.
func TestConnectorTPHandoffThroughBinding(t *testing.T) {
	plane := mustPlane(t)
	const tp, layers, blocks = 2, 3, 8
	hid, secret := NewHandoffID(), NewHandoffSecret()
	src := []int{1, 4, 6}
	dst := []int{7, 0, 2}
	var srcCaches, dstCaches []*testCache
	var cons []int
	for r := range tp {
		p, err := ProducerNew(plane, fmt.Sprintf(`{"engine_id":"prefill","rank":%d,"bypass":"never"}`, r))
		require.NoError(t, err)
		t.Cleanup(func() { _, _ = ProducerClose(p) })
		c, err := ConsumerNew(plane, fmt.Sprintf(`{"engine_id":"decode","rank":%d,"load_timeout_s":20}`, r))
		require.NoError(t, err)
		t.Cleanup(func() { _, _ = ConsumerClose(c) })
		sc := newTestCache(layers, blocks, 4, 2, 16, tp, uint64(100*r))
		dc := newTestCache(layers, blocks, 4, 2, 16, tp, uint64(1000+r))
		srcCaches, dstCaches = append(srcCaches, sc), append(dstCaches, dc)
		n, err := ProducerRegisterHostCache(p, sc.layoutJSON(t), sc.bases())
		require.NoError(t, err)
		require.Equal(t, layers, n)
		_, err = ConsumerRegisterHostCache(c, dc.layoutJSON(t), dc.bases())
		require.NoError(t, err)

		js, err := ProducerBeginHandoff(p, "req-1", hid, secret, "1,4,6")
		require.NoError(t, err)
		var ho map[string]string
		require.NoError(t, json.Unmarshal([]byte(js), &ho))
		require.Equal(t, hid, ho["handoff_id"])
		require.Equal(t, secret, ho["secret"])
		require.Equal(t, "prefill", ho["producer_engine_id"])
		for l := range layers {
			_, err := ProducerSaveLayer(p, "req-1", l)
			require.NoError(t, err)
		}
		_, err = ProducerWaitSaved(p, "req-1", 10)
		require.NoError(t, err)
		// The blocks are released right after the last layer is staged.
		require.Eventually(t, func() bool {
			fin, err := ProducerFinishedSending(p)
			return err == nil && fin == `["req-1"]`
		}, 10*time.Second, time.Millisecond)
		cons = append(cons, c)
	}
	for r, c := range cons {
		_, err := ConsumerLoad(c, "req-1", hid, secret, "[7, 0, 2]")
		require.NoError(t, err)
		ok, f := pollUntil(t, c, "req-1")
		require.True(t, ok, "rank %d: %+v", r, f)
		for l := range layers {
			for kv := range 2 {
				for i := range src {
					require.Equal(t, srcCaches[r].block(l, kv, src[i]), dstCaches[r].block(l, kv, dst[i]), "rank %d layer %d kv %d block %d", r, l, kv, i)
				}
			}
		}
		js, err := ConsumerStats(c)
		require.NoError(t, err)
		var st map[string]float64
		require.NoError(t, json.Unmarshal([]byte(js), &st))
		require.EqualValues(t, 1, st["loads"])
		require.Greater(t, st["raw_bytes"], st["wire_bytes"], "compressed on the wire")
		require.Positive(t, st["go_heap_bytes"])
		require.Positive(t, st["goroutines"])
	}
	runtime.KeepAlive(srcCaches)
	runtime.KeepAlive(dstCaches)
}

// A consumer whose TP size differs from the producer's fails the load with a mismatch that says what differs.
func TestConnectorTPMismatchFailsLoad(t *testing.T) {
	plane := mustPlane(t)
	p, err := ProducerNew(plane, `{"engine_id":"p1"}`)
	require.NoError(t, err)
	defer ProducerClose(p)
	c, err := ConsumerNew(plane, `{"engine_id":"d1","record_wait_s":2}`)
	require.NoError(t, err)
	defer ConsumerClose(c)
	sc := newTestCache(2, 4, 4, 2, 16, 1, 1)
	dc := newTestCache(2, 4, 4, 2, 16, 2, 2)
	_, err = ProducerRegisterHostCache(p, sc.layoutJSON(t), sc.bases())
	require.NoError(t, err)
	_, err = ConsumerRegisterHostCache(c, dc.layoutJSON(t), dc.bases())
	require.NoError(t, err)
	js, err := ProducerBeginHandoff(p, "r", "", "", "0,1")
	require.NoError(t, err)
	var ho map[string]string
	require.NoError(t, json.Unmarshal([]byte(js), &ho))
	for l := range 2 {
		_, err = ProducerSaveLayer(p, "r", l)
		require.NoError(t, err)
	}
	_, err = ConsumerLoad(c, "r", ho["handoff_id"], ho["secret"], "2,3")
	require.NoError(t, err)
	ok, f := pollUntil(t, c, "r")
	require.False(t, ok)
	require.Equal(t, KindMismatch, f.Kind, f.Error)
	require.Contains(t, f.Error, "TP size")
	runtime.KeepAlive(sc)
	runtime.KeepAlive(dc)
}

func TestConnectorErrorsCarryKinds(t *testing.T) {
	plane := mustPlane(t)
	_, err := ProducerNew(plane, `{"rank":0}`)
	require.Equal(t, KindOption, kindPrefix(t, err), "engine id is required")
	_, err = ProducerNew(plane, `{"engine_id":"x","nonsense":1}`)
	require.Equal(t, KindOption, kindPrefix(t, err), "unknown fields are refused")
	_, err = ProducerNew(plane, `{"engine_id":"x","bypass":"sometimes"}`)
	require.Equal(t, KindOption, kindPrefix(t, err))
	_, err = ProducerNew(9999, `{"engine_id":"x"}`)
	require.Equal(t, KindHandle, kindPrefix(t, err))

	p, err := ProducerNew(plane, `{"engine_id":"x"}`)
	require.NoError(t, err)
	_, err = ProducerBeginHandoff(p, "r", "", "", "0")
	require.Equal(t, KindNotRegistered, kindPrefix(t, err))
	c := newTestCache(1, 2, 4, 1, 8, 1, 3)
	bad := c.layout["dtype"]
	c.layout["dtype"] = "complex128"
	_, err = ProducerRegisterHostCache(p, c.layoutJSON(t), c.bases())
	require.Equal(t, KindLayout, kindPrefix(t, err))
	c.layout["dtype"] = bad
	_, err = ProducerRegisterHostCache(p, c.layoutJSON(t), "1,2")
	require.Equal(t, KindLayout, kindPrefix(t, err), "two bases for one layer")
	_, err = ProducerRegisterHostCache(p, c.layoutJSON(t), "abc")
	require.Equal(t, KindArgument, kindPrefix(t, err))
	_, err = ProducerRegisterHostCache(p, c.layoutJSON(t), c.bases())
	require.NoError(t, err)
	_, err = ProducerBeginHandoff(p, "r", "", "", "5")
	require.Equal(t, KindLayout, kindPrefix(t, err), "block outside the cache")
	_, err = ProducerSaveLayer(p, "nope", 0)
	require.Equal(t, KindUnknownRequest, kindPrefix(t, err))
	fp, err := LayoutFingerprint(c.layoutJSON(t))
	require.NoError(t, err)
	require.Len(t, fp, 24)
	n, err := ProducerClose(p)
	require.NoError(t, err)
	require.Equal(t, 0, n)
	_, err = ProducerClose(p)
	require.Equal(t, KindHandle, kindPrefix(t, err))
	runtime.KeepAlive(c)
}
