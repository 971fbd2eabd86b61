package connector

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/connector/nixl"
	"github.com/splitzip/splitzip/connector/transport"
	"github.com/splitzip/splitzip/kernels/cuda"
)

// A producer with a GPU cache and WithNIXLDeviceStaging stages its frames in GPU memory that its NIXL server
// registered (nixl.Server.UseDeviceMemory): the encoders write each frame there, the CRC kernel checksums it
// there, and consumers read it in place. The staging budget and its up-front reservations are the host
// staging's (a handoff reserves its frames' worst case before its first frame), only the bytes live on the GPU;
// the host arena then holds the chunk tables alone.

// tableArenaBytes is the host arena of a producer that stages its frames in GPU memory: chunk tables only
// (256 bytes and 24 a frame each).
const tableArenaBytes = 16 << 20

// gpuRegion is GPU memory registered with NIXL: a producer's staging, a consumer's receive memory.
type gpuRegion struct {
	ordinal int
	ctx     *cuda.Context
	mem     *cuda.DeviceBuffer
}

// newGPURegion allocates n bytes on GPU ordinal; what names them in the error when they do not fit.
func newGPURegion(ordinal int, n int64, what string) (*gpuRegion, error) {
	ctx, err := cuda.PrimaryContext(ordinal)
	if err != nil {
		return nil, err
	}
	g := &gpuRegion{ordinal: ordinal, ctx: ctx}
	if err := ctx.Do(func() (err error) { g.mem, err = ctx.Alloc(int(n)); return err }); err != nil {
		return nil, errors.Join(fmt.Errorf("%w: %s of %d bytes on GPU %d: %w", ErrStagingFull, what, n, ordinal, err), ctx.Close())
	}
	return g, nil
}

// region is the memory as NIXL registers it.
func (g *gpuRegion) region() nixl.Region {
	return nixl.Region{Addr: uintptr(g.mem.Ptr()), Len: g.mem.Len(), Mem: nixl.MemVRAM, Device: uint64(g.ordinal)}
}

// close frees the memory; the NIXL agent that registered it must be closed first.
func (g *gpuRegion) close() error {
	return errors.Join(g.ctx.Do(func() error { return g.mem.Free() }), g.ctx.Close())
}

// useDeviceStaging gives the producer's NIXL server GPU memory for its frames on GPU ordinal, once; a later GPU
// cache must be on the same GPU (p.mu held).
func (p *Producer) useDeviceStaging(ordinal int) error {
	ns, ok := p.srv.(*nixlServer)
	if !ok {
		return optErr("NIXL device staging needs the payload transport nixl")
	}
	if p.devStaging != nil {
		if p.devStaging.ordinal != ordinal {
			return fmt.Errorf("%w: the NIXL device staging is on GPU %d, the KV cache on GPU %d", ErrLayout, p.devStaging.ordinal, ordinal)
		}
		return nil
	}
	g, err := newGPURegion(ordinal, p.o.StagingBytes+p.o.StagingBytes/4+1<<20, "NIXL device staging")
	if err != nil {
		return err
	}
	if err := ns.srv.UseDeviceMemory(nixl.DeviceMemory{Region: g.region()}); err != nil {
		return errors.Join(err, g.close())
	}
	p.devStaging = g
	p.log.Info("frames are staged in GPU memory and read there over NIXL", "gpu", ordinal, "bytes", g.mem.Len())
	return nil
}

// devicePayload is a handoff's payload whose frames lie in GPU staging: its stream payload says when each is
// ready (an empty chunk put with the frame's CRC-32C), DeviceChunk where it lies (nixl.DeviceChunker).
type devicePayload struct {
	*transport.StreamPayload
	mu sync.Mutex
	at []devFrame
}

// devFrame is a frame's buffer in GPU staging: its capacity from the reservation, and once encoded its length
// and CRC-32C.
type devFrame struct {
	p        cuda.DevicePtr
	cap, n   int
	crc      uint32
	complete bool
}

func (d *devicePayload) DeviceChunk(ctx context.Context, i int) (uintptr, int, uint32, bool, error) {
	if _, err := d.StreamPayload.Chunk(ctx, i); err != nil {
		return 0, 0, 0, false, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	f := d.at[i]
	if !f.complete {
		return 0, 0, 0, false, nil
	}
	return uintptr(f.p), f.n, f.crc, true, nil
}

// inspect reads back the headers of the chunk of size bytes at at in GPU memory (frames codec frames back to
// back) and computes its CRC-32C there (ctx current).
func (s *deviceSaver) inspect(at cuda.DevicePtr, size, frames int) (hdrs [2]codec.Header, crc uint32, err error) {
	c := s.c
	if err := c.kc.CRC32CAsync(s.stream, at, size, s.sizes.Ptr()); err != nil {
		return hdrs, 0, err
	}
	if err := s.stream.MemcpyDtoHAsync(s.sizeHost.Ptr(), s.sizes.Ptr(), 4); err != nil {
		return hdrs, 0, err
	}
	off := 0
	for i := range frames {
		if off+codec.HeaderSize > size {
			return hdrs, 0, fmt.Errorf("splitzip: internal error, the encoder wrote a %d-byte chunk with %d frames", size, frames)
		}
		if err := s.stream.MemcpyDtoHAsync(s.headHost.Ptr(), at.Add(off), codec.HeaderSize); err != nil {
			return hdrs, 0, err
		}
		if err := s.stream.Synchronize(); err != nil {
			return hdrs, 0, err
		}
		if hdrs[i], err = codec.ParseHeader(s.headHost.Bytes()[:codec.HeaderSize]); err != nil {
			return hdrs, 0, fmt.Errorf("splitzip: internal error, the encoder wrote a bad frame: %w", err)
		}
		off += int(hdrs[i].FrameLen())
	}
	if off != size {
		return hdrs, 0, fmt.Errorf("splitzip: internal error, a %d-byte chunk holds %d bytes of frames", size, off)
	}
	return hdrs, binary.LittleEndian.Uint32(s.sizeHost.Bytes()), nil
}

// saveFramesOnDevice is saveFrames for a handoff staged in GPU memory.
func (p *Producer) saveFramesOnDevice(s *save, sv *deviceSaver, lay *Layout, res *reservation, job layerJob) error {
	ns := p.srv.(*nixlServer)
	g := s.f.groups()
	frames := 1
	if s.path == pathHighRatio {
		frames = 2 // K's, V's
	}
	for i := job.layer * g; i < (job.layer+1)*g; i++ {
		l, lo, hi := s.f.frame(i)
		n := int(lay.layerRawBytes(hi - lo))
		need := chunkCap(n)
		if err := res.account(need); err != nil {
			return err
		}
		at, err := ns.srv.AllocDeviceWait(s.ctx, need)
		if err != nil {
			p.staging.releaseBytes(need)
			return err
		}
		s.dev.mu.Lock()
		s.dev.at[i] = devFrame{p: cuda.DevicePtr(at), cap: need}
		s.dev.mu.Unlock()
		size, took, err := sv.encodeTo(stagingOut{dev: cuda.DevicePtr(at), cap: need}, l, lo, hi, s.path, job.ready)
		if err != nil {
			return err
		}
		var hdrs [2]codec.Header
		var crc uint32
		t0 := time.Now()
		if err := sv.c.ctx.Do(func() (err error) { hdrs, crc, err = sv.inspect(cuda.DevicePtr(at), size, frames); return err }); err != nil {
			return err
		}
		stage := took.codec + took.copy + time.Since(t0)
		p.policy.observeFrame(s.path, n, size, stage, took.tabled)
		s.dev.mu.Lock()
		s.dev.at[i].n, s.dev.at[i].crc, s.dev.at[i].complete = size, crc, true
		s.dev.mu.Unlock()
		p.stagedFrame(s, i, n, size, hdrs[:frames], crc, took)
		if err := s.payload.PutWithCRC(i, nil, crc); err != nil {
			return err
		}
	}
	return nil
}

// releaseDevice returns a released handoff's GPU staging (its frames' buffers and their reservation).
func (p *Producer) releaseDevice(s *save) {
	ns := p.srv.(*nixlServer)
	s.dev.mu.Lock()
	defer s.dev.mu.Unlock()
	for i, f := range s.dev.at {
		if f.p != 0 {
			ns.srv.FreeDevice(uintptr(f.p))
			p.staging.releaseBytes(f.cap)
			s.dev.at[i] = devFrame{}
		}
	}
}
