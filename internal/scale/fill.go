// Package scale runs many prefill and decode engines against one NATS cluster, each engine a process of its
// own, with requests in flight at once: the scale benchmark (`splitzip bench scale`), its short version in CI,
// and the fault tests that kill NATS nodes, producers and consumers, flip bits and restart the cluster under
// that load. It is lab code: nothing in the product imports it.
//
// A run is a coordinator and its workers. The coordinator (Run) starts the cluster (StartCluster), the
// producer and consumer processes (Worker, through a command the caller supplies: the splitzip binary's
// hidden `bench scale-worker`, or the test binary itself), and plays the router of a serving deployment: it
// asks a producer to save a request, hands the handoff id to a consumer, and waits for the consumer's verdict.
// Every producer's KV cache holds a deterministic fill of real KV (Fill), so a consumer checks each block it
// loaded bit for bit without any payload passing through the coordinator.
package scale

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"unsafe"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/connector"
	"github.com/splitzip/splitzip/internal/safetensors"
)

// BlockTokens is the tokens of one KV block.
const BlockTokens = 16

// Layout is SmolLM2-135M's KV shape (the real-KV fixture's model: 30 layers, 3 KV heads of 64, bf16) in
// 16-token blocks, numBlocks of them per layer.
func Layout(numBlocks int) connector.Layout {
	bb := int64(BlockTokens * 3 * 64 * 2)
	return connector.Layout{Model: "SmolLM2-135M-Instruct", Layers: 30, BlockSize: BlockTokens, KVHeads: 3, HeadSize: 64,
		DType: codec.BF16, TPSize: 1, NumBlocks: numBlocks, BlockStride: bb, KVOffset: int64(numBlocks) * bb}
}

// Fixture is the real KV the caches are filled from: every bf16 tensor of a safetensors file, back to back.
type Fixture struct{ data []byte }

// LoadFixture reads path (tests/data/kv_evaluation.safetensors).
func LoadFixture(path string) (*Fixture, error) {
	f, err := safetensors.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("splitzip/scale: the real-KV fixture: %w", err)
	}
	var data []byte
	for _, t := range f.Tensors {
		if t.DType == "BF16" {
			data = append(data, t.Data...)
		}
	}
	if len(data) < 1<<16 {
		return nil, fmt.Errorf("splitzip/scale: %s holds only %d bytes of bf16 KV", path, len(data))
	}
	return &Fixture{data: data}, nil
}

// DefaultFixture finds tests/data/kv_evaluation.safetensors above the working directory.
func DefaultFixture() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, "tests", "data", "kv_evaluation.safetensors")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("splitzip/scale: tests/data/kv_evaluation.safetensors not found above the working directory (pass its path)")
		}
		dir = parent
	}
}

// Fill writes the content of producer p's block b of layer l, K (kv 0) or V (kv 1), into dst (one block's
// bytes): real KV from a place in the fixture that depends on all four, so no two blocks are alike and a
// block delivered to the wrong place shows.
func (f *Fixture) Fill(dst []byte, p, l, kv, b int) {
	var key [16]byte
	binary.LittleEndian.PutUint32(key[0:], uint32(p))
	binary.LittleEndian.PutUint32(key[4:], uint32(l))
	binary.LittleEndian.PutUint32(key[8:], uint32(kv))
	binary.LittleEndian.PutUint32(key[12:], uint32(b))
	h := uint64(14695981039346656037)
	for _, c := range key {
		h = (h ^ uint64(c)) * 1099511628211
	}
	off := int(h%uint64(len(f.data)/2)) * 2 // bf16-aligned
	for n := 0; n < len(dst); {
		n += copy(dst[n:], f.data[(off+n)%len(f.data):])
	}
}

// cache is a KV cache in Go memory, laid out as Layout says.
type cache struct {
	layout connector.Layout
	mem    [][]byte
	bases  []uintptr
}

func newCache(l connector.Layout) *cache {
	c := &cache{layout: l}
	per := int(l.KVOffset + int64(l.NumBlocks)*l.BlockStride)
	for range l.Layers {
		m := make([]byte, per)
		c.mem = append(c.mem, m)
		c.bases = append(c.bases, uintptr(unsafe.Pointer(&m[0])))
	}
	return c
}

// block is block b of layer l's K (kv 0) or V (kv 1).
func (c *cache) block(l, kv, b int) []byte {
	off := int64(kv)*c.layout.KVOffset + int64(b)*c.layout.BlockStride
	return c.mem[l][off : off+c.layout.BlockBytes()]
}

// fillAll fills every block as producer p's (Fill), using every core.
func (c *cache) fillAll(f *Fixture, p int) {
	var wg sync.WaitGroup
	for l := range c.layout.Layers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for kv := range 2 {
				for b := range c.layout.NumBlocks {
					f.Fill(c.block(l, kv, b), p, l, kv, b)
				}
			}
		}()
	}
	wg.Wait()
}
