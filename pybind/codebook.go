package pybind

import (
	"fmt"
	"sync"

	"github.com/splitzip/splitzip/codec"
)

// codebooks holds the codebooks Python refers to by handle. A codebook is immutable once issued.
var codebooks = newHandles[*codec.Codebook]("codebook")

// histogram is a calibration in progress; Python threads may add to it concurrently.
type histogram struct {
	mu sync.Mutex
	h  *codec.Histogram
}

var histograms = newHandles[*histogram]("histogram")

// CodebookDefault returns a new handle to the built-in codebook of a coded dtype.
func CodebookDefault(dtype int) (int, error) {
	dt, err := dtypeOf(dtype)
	if err != nil {
		return 0, err
	}
	cb, err := codec.DefaultCodebook(dt)
	if err != nil {
		return 0, wrap(err)
	}
	return codebooks.put(cb), nil
}

// CodebookFromJSON validates a codebook in its file form (Codebook.MarshalJSON) and returns a handle to it.
func CodebookFromJSON(js string) (int, error) {
	cb := new(codec.Codebook)
	if err := cb.UnmarshalJSON([]byte(js)); err != nil {
		return 0, wrap(err)
	}
	return codebooks.put(cb), nil
}

// CodebookLoad reads a codebook JSON file and returns a handle to it.
func CodebookLoad(path string) (int, error) {
	cb, err := codec.LoadCodebook(path)
	if err != nil {
		return 0, wrap(err)
	}
	return codebooks.put(cb), nil
}

// CodebookJSON returns a codebook's file form.
func CodebookJSON(h int) (string, error) {
	return jsonOf(codebooks, h)
}

// CodebookSave writes a codebook as an indented JSON file; it returns the handle.
func CodebookSave(h int, path string) (int, error) {
	return saveOf(codebooks, h, path)
}

// CodebookRelease forgets a codebook handle; it returns the number of codebooks still held.
func CodebookRelease(h int) (int, error) {
	return releaseOf(codebooks, h)
}

// HistogramNew starts a calibration: an empty exponent histogram of a coded dtype.
func HistogramNew(dtype int) (int, error) {
	dt, err := dtypeOf(dtype)
	if err != nil {
		return 0, err
	}
	h, err := codec.NewHistogram(dt)
	if err != nil {
		return 0, wrap(err)
	}
	return histograms.put(&histogram{h: h}), nil
}

// HistogramAdd counts the exponents of the n bytes at p, a little-endian tensor of the histogram's dtype, and
// returns the number of elements counted so far.
func HistogramAdd(h int, p uintptr, n int) (total int, err error) {
	defer recoverInto(&err)
	hg, err := histograms.get(h)
	if err != nil {
		return 0, wrap(err)
	}
	b, err := bytesAt(p, n)
	if err != nil {
		return 0, wrap(err)
	}
	hg.mu.Lock()
	defer hg.mu.Unlock()
	if err := hg.h.Add(b); err != nil {
		return 0, wrap(err)
	}
	return int(hg.h.Total), nil
}

// HistogramCodebook returns a handle to the codebook of the 2^bits most frequent exponents counted so far.
func HistogramCodebook(h int, bits int) (int, error) {
	hg, err := histograms.get(h)
	if err != nil {
		return 0, wrap(err)
	}
	hg.mu.Lock()
	defer hg.mu.Unlock()
	if hg.h.Total == 0 {
		return 0, wrap(fmt.Errorf("%w: no calibration data (add at least one non-empty tensor)", codec.ErrCodebook))
	}
	cb, err := hg.h.Codebook(bits)
	if err != nil {
		return 0, wrap(err)
	}
	return codebooks.put(cb), nil
}

// HistogramCoverage returns the fraction of the counted elements whose exponent the codebook codes.
func HistogramCoverage(h int, codebook int) (float64, error) {
	hg, err := histograms.get(h)
	if err != nil {
		return 0, wrap(err)
	}
	cb, err := codebooks.get(codebook)
	if err != nil {
		return 0, wrap(err)
	}
	hg.mu.Lock()
	defer hg.mu.Unlock()
	return hg.h.Coverage(cb), nil
}

// HistogramRelease forgets a histogram handle; it returns the number of histograms still held.
func HistogramRelease(h int) (int, error) {
	if err := histograms.release(h); err != nil {
		return 0, wrap(err)
	}
	return histograms.len(), nil
}
