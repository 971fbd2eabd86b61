package transport

import (
	"math/bits"
	"sync"
)

// Chunk buffers come from size-classed pools (powers of two from 4 KiB), so
// a consumer that receives chunks of similar size reuses the same buffers and
// a long run of transfers does not grow the heap.
const (
	minClassBits = 12
	numClasses   = 31 - minClassBits // up to 1 GiB
)

var bufPools [numClasses]sync.Pool

func classOf(n int) int {
	if n <= 1<<minClassBits {
		return 0
	}
	return bits.Len(uint(n-1)) - minClassBits
}

// getBuf returns a buffer of length n; its capacity is n rounded up to its
// class.
func getBuf(n int) *[]byte {
	c := classOf(n)
	if v := bufPools[c].Get(); v != nil {
		b := v.(*[]byte)
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(c+minClassBits))
	return &b
}

func putBuf(b *[]byte) {
	c := classOf(cap(*b))
	if cap(*b) != 1<<(c+minClassBits) {
		return // not ours
	}
	bufPools[c].Put(b)
}
