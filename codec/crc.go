package codec

import (
	"hash/crc32"
	"sync"

	"github.com/splitzip/splitzip/internal/crc32c"
)

// CRC-32C (Castagnoli) of whole frames, computed while the encoder writes them: each part checksums its
// chunks' codes and residuals as it finishes them (in L1), and the pieces are combined in the frame's byte
// order, so a caller that checksums frames (the transport does) need not read the frame again.

// crcOf is the CRC-32C of b.
func crcOf(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// crcMin is the size from which a checksum is split over goroutines.
const crcMin = 4 << 20

// crcRunner checksums large buffers on several goroutines and combines the pieces.
type crcRunner struct {
	parts []crcPart
	jobs  []job
	wg    sync.WaitGroup
}

type crcPart struct {
	wg  *sync.WaitGroup
	b   []byte
	crc uint32
}

func (p *crcPart) run() {
	p.crc = crcOf(p.b)
	p.wg.Done()
}

// sum is the CRC-32C of b, on up to conc goroutines.
func (r *crcRunner) sum(b []byte, conc int) uint32 {
	k := min(conc, len(b)/crcMin)
	if k <= 1 {
		return crcOf(b)
	}
	for len(r.parts) < k {
		r.parts = append(r.parts, crcPart{})
	}
	if len(r.jobs) < k {
		r.jobs = make([]job, k)
	}
	for i := range k {
		p := &r.parts[i]
		p.wg, p.b = &r.wg, b[len(b)*i/k:len(b)*(i+1)/k]
		r.jobs[i] = p
	}
	runParts(&r.wg, r.jobs[:k])
	crc := r.parts[0].crc
	for i := 1; i < k; i++ {
		crc = crc32c.Combine(crc, r.parts[i].crc, uint64(len(r.parts[i].b)))
		r.parts[i].b = nil
	}
	r.parts[0].b = nil
	return crc
}
