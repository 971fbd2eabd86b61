package codec

import (
	"fmt"
	"runtime"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// threadCPU is the calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID): on a machine shared with other jobs it
// counts the codec's own work, not the time other processes held the core.
func threadCPU() time.Duration {
	var ts syscall.Timespec
	syscall.Syscall(syscall.SYS_CLOCK_GETTIME, 3 /* CLOCK_THREAD_CPUTIME_ID */, uintptr(unsafe.Pointer(&ts)), 0)
	return time.Duration(ts.Nano())
}

// BenchmarkRealKVLayers times the connector's codec path on each real-KV file, one goroutine: fast frames of a
// layer's K and V (8 MiB, the layer's tokens tiled) with a codebook calibrated on that layer, and high-ratio
// frames of each K or V (4 MiB) with a table calibrated on that tensor, as the connector learns them. Besides
// ns/op it reports GB/s by the thread's CPU clock (cpu-GB/s) and copy()'s of the same buffers (copy-cpu-GB/s),
// which stay comparable on a machine shared with other jobs.
//
//	go test ./codec -run '^$' -bench RealKVLayers -benchtime 5x
func BenchmarkRealKVLayers(b *testing.B) {
	for _, file := range []string{"kv_evaluation.safetensors", "kv_gemma3.safetensors"} {
		f := loadFixture(b, file)
		type frame struct {
			src  []byte
			opts []EOption
		}
		var fast, high []frame
		tile := func(x []byte, n int) []byte {
			out := make([]byte, 0, n)
			for len(out) < n {
				out = append(out, x[:min(len(x), n-len(out))]...)
			}
			return out
		}
		for i := 0; i+1 < len(f.Tensors); i += 2 {
			k, v := f.Tensors[i].Data, f.Tensors[i+1].Data
			cb, err := Calibrate(BF16, DefaultBits, k, v)
			if err != nil {
				b.Fatal(err)
			}
			fast = append(fast, frame{tile(append(append([]byte{}, k...), v...), 8<<20), []EOption{WithCodebook(cb)}})
			for _, x := range [][]byte{k, v} {
				h, _ := NewHistogram(BF16)
				if err := h.Add(x); err != nil {
					b.Fatal(err)
				}
				t, err := h.CodeTable()
				if err != nil {
					b.Fatal(err)
				}
				high = append(high, frame{tile(x, 4<<20), []EOption{WithMode(ModeHighRatio), WithCodeTable(t)}})
			}
		}
		for _, m := range []struct {
			name   string
			frames []frame
		}{{"fast", fast}, {"high-ratio", high}} {
			encs, frames := make([]*Encoder, len(m.frames)), make([][]byte, len(m.frames))
			var raw int
			for i, fr := range m.frames {
				enc, err := NewEncoder(append(fr.opts, WithEncoderConcurrency(1))...)
				if err != nil {
					b.Fatal(err)
				}
				encs[i], frames[i] = enc, make([]byte, 0, MaxEncodedLen(len(fr.src)))
				raw += len(fr.src)
			}
			dec, err := NewDecoder(WithDecoderConcurrency(1))
			if err != nil {
				b.Fatal(err)
			}
			out := make([]byte, 8<<20)
			for _, op := range []string{"encode", "decode"} {
				b.Run(fmt.Sprintf("%s/%s/%s", file, m.name, op), func(b *testing.B) {
					runtime.LockOSThread()
					defer runtime.UnlockOSThread()
					b.SetBytes(int64(raw))
					var work, cp time.Duration
					for range b.N {
						for i, fr := range m.frames {
							c0 := threadCPU()
							if op == "encode" {
								frames[i], err = encs[i].Encode(frames[i][:0], fr.src, BF16)
							} else {
								_, err = dec.DecodeInto(out[:len(fr.src)], frames[i])
							}
							c1 := threadCPU()
							copy(out, fr.src)
							cp += threadCPU() - c1
							work += c1 - c0
							if err != nil {
								b.Fatal(err)
							}
						}
					}
					gb := float64(raw) * float64(b.N) / 1e9
					b.ReportMetric(gb/work.Seconds(), "cpu-GB/s")
					b.ReportMetric(gb/cp.Seconds(), "copy-cpu-GB/s")
				})
			}
		}
	}
}
