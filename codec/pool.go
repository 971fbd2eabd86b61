package codec

import (
	"runtime"
	"sync"
)

// A shared pool of worker goroutines runs the parts of large encodes and decodes. It is started on first use
// and sized to GOMAXPROCS; jobs are pointers to parts the Encoder or Decoder owns, so handing one over does not
// allocate. When every worker is busy (several encoders at once), the caller runs the part itself instead of
// queueing behind them.
type job interface{ run() }

var pool struct {
	once sync.Once
	jobs chan job
}

func startPool() {
	pool.jobs = make(chan job)
	for range runtime.GOMAXPROCS(0) {
		go func() {
			for j := range pool.jobs {
				j.run()
			}
		}()
	}
}

// runParts runs jobs[1:] on the pool and jobs[0] on the calling goroutine, and returns when all are done.
// Each job must call wg.Done when it finishes.
func runParts(wg *sync.WaitGroup, jobs []job) {
	pool.once.Do(startPool)
	wg.Add(len(jobs))
	for _, j := range jobs[1:] {
		select {
		case pool.jobs <- j:
		default:
			j.run()
		}
	}
	jobs[0].run()
	wg.Wait()
}
