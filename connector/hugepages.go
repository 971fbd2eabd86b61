package connector

import (
	"cmp"
	"errors"
	"log/slog"
	"slices"
)

// Transparent huge pages for a registered host KV cache. The codec reads (producer) and writes (consumer) a
// request's blocks where the engine keeps them: 6 KiB blocks scattered over a cache of many gigabytes. In 4 KiB
// pages nearly every block starts with a page walk and a TLB miss; in 2 MiB pages one walk covers hundreds of
// blocks. Where THP is in "madvise" mode (the common default) an engine's allocation is in small pages unless it
// asked, so registration asks on its behalf: MADV_HUGEPAGE for memory faulted in later and MADV_COLLAPSE (Linux
// ≥ 6.1) for what is already there. Only whole huge pages inside the cache's regions are advised, never a
// neighbour's memory, and the contents do not change. It is best effort: a kernel that refuses (THP disabled,
// file-backed or pinned memory, an old kernel) leaves the cache as it was, and handoffs go on either way.
//
// Collapsing copies the memory into fresh huge pages, about a second per GiB, so it runs in the background, a
// slice at a time, and stops when the cache is closed or replaced; handoffs meanwhile use whichever pages the
// kernel has at the moment.

// errNoHugePages is what platforms without transparent huge pages report.
var errNoHugePages = errors.New("transparent huge pages are not available on this platform")

// collapseStep is the most memory one MADV_COLLAPSE call takes on (tens of milliseconds), so that closing the
// cache does not wait long for the background work.
const collapseStep = 64 << 20

// HugePageReport says what the huge-page advice did for the last host cache registered.
type HugePageReport struct {
	// Bytes is the cache memory inside whole huge pages that was advised (0: nothing was tried).
	Bytes int64
	// Collapsed is the part of Bytes that MADV_COLLAPSE put into huge pages.
	Collapsed int64
	// Failures counts the kernel's refusals (MADV_HUGEPAGE or MADV_COLLAPSE on a range); Err is the first.
	Failures int
	Err      error
	// Done is false while the background collapse is still going on.
	Done bool
}

// region is a half-open address range [lo, hi).
type region struct{ lo, hi uintptr }

// regions returns the address ranges the cache's blocks occupy, one per layer, sorted and merged.
func (c *hostCache) regions() []region {
	l := &c.layout
	lo, hi := min(0, l.KVOffset), max(0, l.KVOffset)+int64(l.NumBlocks-1)*l.BlockStride+l.BlockBytes()
	rs := make([]region, 0, len(c.bases))
	for _, b := range c.bases {
		rs = append(rs, region{uintptr(int64(b) + lo), uintptr(int64(b) + hi)})
	}
	slices.SortFunc(rs, func(a, b region) int { return cmp.Compare(a.lo, b.lo) })
	out := rs[:0]
	for _, r := range rs {
		if n := len(out); n > 0 && r.lo <= out[n-1].hi {
			out[n-1].hi = max(out[n-1].hi, r.hi)
			continue
		}
		out = append(out, r)
	}
	return out
}

// hugeInside rounds r inward to whole pages of size page (a power of two); ok is false when none fits.
func hugeInside(r region, page uintptr) (region, bool) {
	lo := (r.lo + page - 1) &^ (page - 1)
	hi := r.hi &^ (page - 1)
	if lo < r.lo || hi <= lo { // the round-up wrapped, or no whole page inside
		return region{}, false
	}
	return region{lo, hi}, true
}

// startHugePages advises the whole huge pages inside the cache's regions: MADV_HUGEPAGE now, MADV_COLLAPSE in
// the background (see the comment at the top). The outcome is logged to log and given to store once, when
// the collapse has ended (finished, or stopped by close).
func (c *hostCache) startHugePages(log *slog.Logger, store func(HugePageReport)) {
	var rep HugePageReport
	report := func(rep HugePageReport) {
		logHugePages(log, rep)
		store(rep)
	}
	page, err := hugePageSize()
	if err != nil {
		rep.Failures, rep.Err, rep.Done = 1, err, true
		report(rep)
		return
	}
	var todo []region
	for _, r := range c.regions() {
		in, ok := hugeInside(r, page)
		if !ok {
			continue
		}
		rep.Bytes += int64(in.hi - in.lo)
		if err := adviseHuge(in.lo, in.hi); err != nil {
			rep.Failures++
			if rep.Err == nil {
				rep.Err = err
			}
			continue // a range the kernel will not mark will not collapse either
		}
		todo = append(todo, in)
	}
	c.hugeStop, c.hugeDone = make(chan struct{}), make(chan struct{})
	go func() {
		stopped := c.collapse(todo, &rep)
		close(c.hugeDone)
		if !stopped { // a closed or replaced cache's report would only overwrite its successor's
			rep.Done = true
			report(rep) // after hugeDone: the report takes its owner's lock, which close may hold
		}
	}()
}

// collapse runs MADV_COLLAPSE over rs a step at a time, counting into rep, until done or stopped.
func (c *hostCache) collapse(rs []region, rep *HugePageReport) (stopped bool) {
	for _, r := range rs {
		for lo := r.lo; lo < r.hi; {
			select {
			case <-c.hugeStop:
				return true
			default:
			}
			hi := lo + min(collapseStep, r.hi-lo)
			if err := collapseHuge(lo, hi); err != nil {
				rep.Failures++
				if rep.Err == nil {
					rep.Err = err
				}
			} else {
				rep.Collapsed += int64(hi - lo)
			}
			lo = hi
		}
	}
	return false
}

// stopHugePages stops the background collapse, if any, and waits for it.
func (c *hostCache) stopHugePages() {
	if c.hugeStop == nil {
		return
	}
	select {
	case <-c.hugeStop:
	default:
		close(c.hugeStop)
	}
	<-c.hugeDone
}

// logHugePages records what the advice did: a refusal is worth a line (the codec runs slower on small pages),
// not a failed registration.
func logHugePages(log *slog.Logger, rep HugePageReport) {
	if rep.Err != nil {
		log.Info("host KV cache: huge pages not (all) granted; the codec runs on the pages the kernel gave",
			"advised_bytes", rep.Bytes, "collapsed_bytes", rep.Collapsed, "refusals", rep.Failures, "err", rep.Err)
		return
	}
	log.Debug("host KV cache in huge pages", "bytes", rep.Collapsed)
}
