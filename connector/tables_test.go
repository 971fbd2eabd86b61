package connector

import (
	"fmt"
	"hash/crc32"
	"path/filepath"
	"slices"
	"testing"
	"unsafe"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/internal/safetensors"
	"github.com/stretchr/testify/require"
)

// gemmaLayout is a host cache holding exactly the second real model's KV (Gemma 3 270M, tests/data/README.md):
// 18 layers, 16-token blocks of its one 256-wide KV head, 8 blocks (the file's 128 tokens).
func gemmaLayout() Layout {
	bb := int64(16 * 1 * 256 * 2)
	return Layout{Model: "gemma-3-270m", Layers: 18, BlockSize: 16, KVHeads: 1, HeadSize: 256, DType: codec.BF16,
		TPSize: 1, NumBlocks: 8, BlockStride: bb, KVOffset: 8 * bb}
}

// newGemmaCache fills a gemmaLayout cache: block b of layer l holds tokens 16b … 16b+15 of the layer's K and V.
func newGemmaCache(t *testing.T) *testCache {
	f, err := safetensors.ReadFile(filepath.Join("..", "tests", "data", "kv_gemma3.safetensors"))
	require.NoError(t, err)
	byName := map[string][]byte{}
	for _, x := range f.Tensors {
		byName[x.Name] = x.Data
	}
	l := gemmaLayout()
	c := &testCache{layout: l}
	for layer := range l.Layers {
		m := make([]byte, l.KVOffset+int64(l.NumBlocks)*l.BlockStride)
		k, v := byName[fmt.Sprintf("layer.%d.k", layer)], byName[fmt.Sprintf("layer.%d.v", layer)]
		require.Len(t, k, int(l.KVOffset))
		require.Len(t, v, int(l.KVOffset))
		copy(m, k)
		copy(m[l.KVOffset:], v)
		keepAlive.Lock()
		keepAlive.mem = append(keepAlive.mem, m)
		keepAlive.Unlock()
		c.mem = append(c.mem, m)
		c.bases = append(c.bases, uintptr(unsafe.Pointer(&m[0])))
	}
	return c
}

// TestLearnedTablesGemma3: on a model unlike the one the built-in codebook was calibrated on, the tables the
// producer learns from its own handoffs, per layer (fast) and per layer and K/V (high-ratio), code within 0.5 %
// of tables calibrated offline on the very KV they code, in both modes, whichever mode's handoffs taught them.
func TestLearnedTablesGemma3(t *testing.T) {
	l := gemmaLayout()
	src := newGemmaCache(t)
	hc, err := newHostCache(src.layout, src.bases)
	require.NoError(t, err)
	cs, err := newCoders(nil) // fast mode: the built-in codebook until a layer has its own
	require.NoError(t, err)
	pool := make(chan *coders, 1)
	pool <- cs
	dec, err := codec.NewDecoder()
	require.NoError(t, err)

	// Offline: each (layer, K/V) table and each layer's codebook calibrated on all of the cache's blocks.
	all := []int{0, 1, 2, 3, 4, 5, 6, 7}
	offline := newTableLearner(&l, nil, false)
	for layer := range l.Layers {
		var both codec.Histogram
		both.DType = codec.BF16
		for kv := range 2 {
			h, err := codec.NewHistogram(codec.BF16)
			require.NoError(t, err)
			for _, b := range all {
				require.NoError(t, h.Add(src.block(layer, kv, b)))
				require.NoError(t, both.Add(src.block(layer, kv, b)))
			}
			s := &offline.slots[2*layer+kv]
			s.table, err = h.CodeTable()
			require.NoError(t, err)
			s.built = true
		}
		offline.book[layer], err = both.Codebook(codec.DefaultBits)
		require.NoError(t, err)
	}

	// handoff codes every layer of blocks as one chunk of path p, checks that each decodes bit-exact, and returns
	// the raw and the coded bytes.
	n := int(l.layerRawBytes(len(all)))
	buf := make([]byte, chunkCap(n))
	want, got := make([]byte, n), make([]byte, n)
	handoff := func(tables *tableLearner, blocks []int, p path) (raw, coded int) {
		t.Helper()
		sv, err := hc.saver(blocks, saveEnv{coders: pool, tables: tables}, len(blocks))
		require.NoError(t, err)
		for layer := range l.Layers {
			frame, _, err := sv.encode(buf, layer, 0, len(blocks), p, false, nil)
			require.NoError(t, err)
			require.NoError(t, decodeChunk(dec, got, frame, p))
			hc.gatherLayer(want, layer, blocks, 0)
			require.Equal(t, want, got, "layer %d", layer)
			crc, ok := sv.(frameChecksummer).lastCRC()
			require.True(t, ok)
			require.Equal(t, crc32.Checksum(frame, castagnoli), crc, "the CRC-32C known from the encode, layer %d", layer)
			raw += n
			coded += len(frame)
		}
		return raw, coded
	}
	ratio := func(tables *tableLearner, p path) float64 {
		raw, coded := handoff(tables, all, p)
		return float64(raw) / float64(coded)
	}
	// Requests bring the blocks in different orders, so the sampled blocks differ from handoff to handoff.
	request := func(r int) []int {
		b := slices.Concat(all[r%len(all):], all[:r%len(all)])
		if r%2 == 1 {
			slices.Reverse(b)
		}
		return b
	}
	learned := func(tl *tableLearner) bool {
		for layer := range l.Layers {
			if tl.table(layer, 0) == nil || tl.table(layer, 1) == nil || tl.codebook(layer) == nil {
				return false
			}
		}
		return true
	}

	handoff(offline, all, pathRaw) // raw chunks: bit-exact, and checksummed as gathered
	offFast, offHigh := ratio(offline, pathFast), ratio(offline, pathHighRatio)
	builtin := ratio(newTableLearner(&l, nil, true), pathFast) // fast frames with the built-in codebook only
	t.Logf("offline tables: fast %.4f, high-ratio %.4f; fast with the built-in codebook %.4f", offFast, offHigh, builtin)
	for _, teach := range []path{pathHighRatio, pathFast} {
		t.Run("taught by "+map[path]string{pathFast: "fast", pathHighRatio: "high-ratio"}[teach]+" handoffs", func(t *testing.T) {
			tl := newTableLearner(&l, nil, false)
			handoffs := 0
			for ; !learned(tl) && handoffs < 64; handoffs++ {
				handoff(tl, request(handoffs), teach)
			}
			require.True(t, learned(tl), "every layer learned its tables")
			// Each handoff samples one 16-token block of each layer's K and V: 4,096 exponents of each.
			require.Equal(t, learnFirst/4096, handoffs)
			fast, high := ratio(tl, pathFast), ratio(tl, pathHighRatio)
			t.Logf("after %d handoffs: fast %.4f (%.2f%% of offline), high-ratio %.4f (%.2f%% of offline)",
				handoffs, fast, 100*fast/offFast, high, 100*high/offHigh)
			require.GreaterOrEqual(t, fast, 0.995*offFast)
			require.GreaterOrEqual(t, high, 0.995*offHigh)
			require.Greater(t, fast, 1.01*builtin, "the learned codebooks beat the built-in one on this model")
		})
	}
}

// A fast frame is sampled until its layer's K and V tables are built, then one in resampleEvery; a pinned codebook
// and table leave nothing to learn, and a pinned codebook alone leaves the high-ratio tables to learn.
func TestFastCodebookSampling(t *testing.T) {
	l := smallLayout(8)
	tl := newTableLearner(&l, nil, false)
	for range 3 {
		cb, sample := tl.fastCodebook(4)
		require.Nil(t, cb)
		require.True(t, sample)
	}
	h := &codec.Histogram{DType: codec.BF16, Total: learnFirst}
	h.Counts[120] = learnFirst
	tl.add(4, 0, h)
	require.NotNil(t, tl.table(4, 0))
	require.Nil(t, tl.table(4, 1), "V has no samples yet")
	book := tl.codebook(4)
	require.NotNil(t, book, "K's build gives the layer a codebook")
	require.Equal(t, uint8(120), book.Exponents[0])
	cb, sample := tl.fastCodebook(4)
	require.Same(t, book, cb)
	require.True(t, sample, "V still wants samples")
	tl.add(4, 1, h)
	require.NotNil(t, tl.table(4, 1))
	book = tl.codebook(4)
	sampled := 0
	for range 4 * resampleEvery {
		cb, sample := tl.fastCodebook(4)
		require.Same(t, book, cb)
		if sample {
			sampled++
		}
	}
	require.Equal(t, 4, sampled)
	cb, sample = tl.fastCodebook(3)
	require.Nil(t, cb, "other layers are untouched")
	require.True(t, sample)

	table, err := h.CodeTable()
	require.NoError(t, err)
	pinned := newTableLearner(&l, table, true)
	cb, sample = pinned.fastCodebook(0)
	require.Nil(t, cb)
	require.False(t, sample)
	books := newTableLearner(&l, nil, true)
	require.True(t, books.learning())
	books.add(0, 0, h)
	books.add(0, 1, h)
	require.NotNil(t, books.table(0, 1))
	require.Nil(t, books.codebook(0), "the pinned codebook stays the encoder's")
	sampled = 0
	for range 2 * resampleEvery {
		cb, sample := books.fastCodebook(0)
		require.Nil(t, cb)
		if sample {
			sampled++
		}
	}
	require.Equal(t, 2, sampled, "fast frames still feed the tables, one in resampleEvery")
}
