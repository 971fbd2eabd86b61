package kernels

import (
	"fmt"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/kernels/cuda"
)

// CRC-32C on the GPU (crc.cuh): the checksum hash/crc32 computes with the Castagnoli table, of a buffer that
// stays in device memory.
const (
	crcName    = "sz_crc32c"
	crcThreads = 256        // kCRCThreads
	crcPiece   = 1 << 9     // bytes a thread checksums (kCRCPiece)
	crcPoly    = 0x82F63B78 // kCRCPoly: CRC-32C's polynomial, reflected
)

// crcMulMod returns a·b modulo CRC-32C's polynomial, in the reflected bit order (bit 31 is x^0).
func crcMulMod(a, b uint32) uint32 {
	var p uint32
	for range 32 {
		p ^= b & -(a >> 31)
		a <<= 1
		b = b>>1 ^ crcPoly&-(b&1)
	}
	return p
}

// crcX8[k] is x^(8·2^k) modulo the polynomial (kCRCX8 in crc.cuh).
var crcX8 = func() (t [64]uint32) {
	t[0] = 1 << 23 // x^8
	for k := 1; k < len(t); k++ {
		t[k] = crcMulMod(t[k-1], t[k-1])
	}
	return t
}()

// crcShift returns v·x^(8d): the raw CRC v followed by d zero bytes.
func crcShift(v uint32, d uint64) uint32 {
	for k := 0; d != 0; k, d = k+1, d>>1 {
		if d&1 != 0 {
			v = crcMulMod(v, crcX8[k])
		}
	}
	return v
}

// crcPreset is what the kernel's result word starts from for n bytes: the conditioning of a CRC-32C (its
// initial 0xFFFFFFFF carried through n bytes, and the final complement), to which the kernel XORs the raw CRC
// of every piece.
func crcPreset(n uint64) uint32 { return ^crcShift(0xFFFFFFFF, n) }

// CRC32CAsync enqueues on s the CRC-32C (Castagnoli) of the n bytes at src into the little-endian uint32 at
// out: a 4-byte memset of out, then one kernel. src must be 16-byte aligned and out 4-byte aligned. Nothing
// waits for the host; the result is ready when the stream reaches the point after the call.
func (c *Codec) CRC32CAsync(s *cuda.Stream, src cuda.DevicePtr, n int, out cuda.DevicePtr) error {
	if n < 0 {
		return fmt.Errorf("%w: a CRC of %d bytes", codec.ErrSize, n)
	}
	if !aligned(src) || out%4 != 0 {
		return ErrAlignment
	}
	if err := s.MemsetD32Async(out, crcPreset(uint64(n)), 1); err != nil {
		return err
	}
	pieces := (uint64(n&^15) + crcPiece - 1) / crcPiece
	grid := max(1, (pieces+crcThreads-1)/crcThreads)
	if grid > 1<<31-1 {
		return fmt.Errorf("%w: a CRC of %d bytes", codec.ErrSize, n)
	}
	args := cuda.NewArgs().Ptr(src).U64(uint64(n)).Ptr(out)
	return c.crc.Launch(s, cuda.Dim3{X: uint32(grid)}, cuda.Dim3{X: crcThreads}, 0, args)
}
