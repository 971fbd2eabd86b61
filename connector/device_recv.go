package connector

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/connector/nixl"
	"github.com/splitzip/splitzip/kernels"
	"github.com/splitzip/splitzip/kernels/cuda"
	szn "github.com/splitzip/splitzip/nats"
)

// A consumer with a GPU cache and WithNIXLDeviceReceive reads NIXL chunks straight into its GPU's memory
// (nixl.Client.FetchDevice): the CRC kernel verifies each chunk there, and the decode kernels read it where it
// landed. Only the frames' 64-byte headers come back to the host, to be checked as parseChunk checks them.

// gpuRecv is that GPU memory and the kernel that checksums it.
type gpuRecv struct {
	*gpuRegion
	kc *kernels.Codec

	mu     sync.Mutex // one checksum at a time: one stream, one result word
	stream *cuda.Stream
	out    *cuda.DeviceBuffer
	host   *cuda.HostBuffer
}

func newGPURecv(ordinal int, n int64) (*gpuRecv, error) {
	r, err := newGPURegion(ordinal, n, "NIXL device receive memory")
	if err != nil {
		return nil, err
	}
	g := &gpuRecv{gpuRegion: r}
	err = g.ctx.Do(func() error {
		var err error
		if g.kc, err = kernels.NewCodec(g.ctx); err != nil {
			return err
		}
		if g.stream, err = g.ctx.NewStream(cuda.StreamNonBlocking); err != nil {
			return err
		}
		if g.out, err = g.ctx.Alloc(4); err != nil {
			return err
		}
		g.host, err = g.ctx.HostAlloc(4, cuda.HostAllocPortable)
		return err
	})
	if err != nil {
		return nil, errors.Join(err, g.close())
	}
	return g, nil
}

// memory is what the NIXL client registers and reads into.
func (g *gpuRecv) memory() nixl.DeviceMemory {
	return nixl.DeviceMemory{Region: g.region(), CRC32C: g.crc32c}
}

// crc32c is the CRC-32C of the n bytes at p, computed on the GPU.
func (g *gpuRecv) crc32c(p uintptr, n int) (uint32, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var crc uint32
	err := g.ctx.Do(func() error {
		if err := g.kc.CRC32CAsync(g.stream, cuda.DevicePtr(p), n, g.out.Ptr()); err != nil {
			return err
		}
		if err := g.stream.MemcpyDtoHAsync(g.host.Ptr(), g.out.Ptr(), 4); err != nil {
			return err
		}
		if err := g.stream.Synchronize(); err != nil {
			return err
		}
		crc = binary.LittleEndian.Uint32(g.host.Bytes())
		return nil
	})
	return crc, err
}

// close frees the memory and the checksum's resources; the NIXL client that read into it must be closed first.
func (g *gpuRecv) close() error {
	err := g.ctx.Do(func() error {
		var err error
		if g.stream != nil {
			err = errors.Join(g.stream.Synchronize(), g.stream.Close())
		}
		if g.host != nil {
			err = errors.Join(err, g.host.Free())
		}
		if g.kc != nil {
			err = errors.Join(err, g.kc.Close())
		}
		return freeJoin(err, g.out)
	})
	return errors.Join(err, g.gpuRegion.close())
}

// useDeviceReceive gives the consumer's NIXL client GPU memory on GPU ordinal, once (WithNIXLDeviceReceive);
// a later GPU cache must be on the same GPU.
func (c *Consumer) useDeviceReceive(ordinal int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.recv != nil {
		if c.recv.ordinal != ordinal {
			return fmt.Errorf("%w: the NIXL device receive memory is on GPU %d, the KV cache on GPU %d", ErrLayout, c.recv.ordinal, ordinal)
		}
		return nil
	}
	g, err := newGPURecv(ordinal, c.o.NIXLDeviceReceive)
	if err != nil {
		return err
	}
	if err := c.nixl.UseDeviceMemory(g.memory()); err != nil {
		return errors.Join(err, g.close())
	}
	c.recv = g
	c.log.Info("NIXL chunks are read into GPU memory", "gpu", ordinal, "bytes", c.o.NIXLDeviceReceive)
	return nil
}

// frameHeaderAt reads back and parses the header of the frame at off in the n-byte chunk at src (sl taken,
// ctx current).
func (sl *deviceSlot) frameHeaderAt(src cuda.DevicePtr, off, n int) (codec.Header, error) {
	if off+codec.HeaderSize > n {
		return codec.Header{}, fmt.Errorf("%w: a frame header at byte %d of a %d-byte chunk", codec.ErrTruncated, off, n)
	}
	if err := sl.stream.MemcpyDtoHAsync(sl.host.Ptr(), src.Add(off), codec.HeaderSize); err != nil {
		return codec.Header{}, err
	}
	if err := sl.stream.Synchronize(); err != nil {
		return codec.Header{}, err
	}
	return codec.ParseHeader(sl.host.Bytes()[:codec.HeaderSize])
}

// decodeAt decodes the n-byte chunk at src in GPU memory into layer l's blocks [lo, hi) of the load: its
// frames are checked as parseChunk checks them (raw, mode, want raw bytes) from their headers, then decoded
// where they lie. A chunk the kernels do not decode goes through host memory, as decode takes it.
func (ld *deviceLoader) decodeAt(src cuda.DevicePtr, n int, raw bool, mode string, want uint64, l, lo, hi int) (took timing, err error) {
	sl := <-ld.slots
	defer func() { ld.slots <- sl }()
	c := ld.c
	parts, size := 1, want
	if mode == szn.FrameModeHighRatio {
		parts, size = 2, want/2
	}
	var ch chunk // headers and lengths only: frames[i] is nil
	var at [2]int
	err = c.ctx.Do(func() error {
		off := 0
		for i := range parts {
			h, err := sl.frameHeaderAt(src, off, n)
			if err != nil {
				return err
			}
			if err := checkFrame(h, raw, mode, size, i, parts); err != nil {
				return err
			}
			if h.FrameLen() > uint64(n-off) {
				return fmt.Errorf("%w: have %d bytes, the frame is %d", codec.ErrTruncated, n-off, h.FrameLen())
			}
			ch.hdrs[i], at[i] = h, off
			off += int(h.FrameLen())
		}
		if off != n {
			return fmt.Errorf("%d bytes after the chunk's %d codec frame(s)", n-off, parts)
		}
		ch.n = parts
		return nil
	})
	if err != nil {
		return took, err
	}
	bf16 := c.lay.DType == codec.BF16
	if gpu := parts == 2 && onGPU(ch, c.lay.DType); gpu || parts == 1 && (bf16 || ch.hdrs[0].Raw) {
		err = c.ctx.Do(func() error {
			if err := sl.t0.Record(sl.stream); err != nil {
				return err
			}
			switch {
			case gpu:
				frames, lens := [2]cuda.DevicePtr{src, src.Add(at[1])}, [2]int{at[1], n - at[1]}
				if frames[1]%16 != 0 { // V's frame follows K's unaligned: the kernels read 16-byte vectors
					if lens[1] > sl.dev.Len() {
						return fmt.Errorf("%w: a %d-byte V frame, at most %d expected", ErrFrame, lens[1], sl.dev.Len())
					}
					if err := sl.stream.MemcpyDtoDAsync(sl.dev.Ptr(), frames[1], lens[1]); err != nil {
						return err
					}
					frames[1] = sl.dev.Ptr()
				}
				took, err = ld.decodeHighRatioAt(sl, frames, lens, l, lo, hi)
			case bf16:
				took, err = ld.decodeScatterAt(sl, src, n, l, lo, hi)
			default:
				took, err = ld.scatterRaw(sl, ch.hdrs[0], n, src, l, lo, hi)
			}
			return err
		})
		return took, err
	}
	// Frames only the CPU decodes (high-ratio frames with a payload checksum, fast frames of other dtypes):
	// the chunk comes to the host first.
	buf := make([]byte, n)
	t0 := time.Now()
	if err := c.ctx.Do(func() error { return sl.stream.CopyDtoH(buf, src) }); err != nil {
		return took, err
	}
	copied := time.Since(t0)
	if ch, err = parseChunk(buf, raw, mode, want); err != nil {
		return took, err
	}
	took, err = ld.decodeWith(sl, ch, l, lo, hi)
	took.copy += copied
	return took, err
}
