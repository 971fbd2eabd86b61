package cuda

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"unsafe"
)

// Getenv is the environment variable key as the C library holds it now, else as Go's copy of the environment
// has it. Loaders of vendor libraries read their settings through it: a Go library inside another program
// (the Python extension) copies the environment once, from the block the process started with, so it misses
// what the host program set later (Python's os.environ) and sees nothing at all once a program has written
// its process title over that block (setproctitle, which vLLM's engine processes call). The C library's view
// follows both.
func Getenv(key string) string {
	k := C.CString(key)
	defer C.free(unsafe.Pointer(k))
	if v := C.getenv(k); v != nil {
		return C.GoString(v)
	}
	return os.Getenv(key)
}

// dlopen flags (glibc values).
const (
	RTLDLazy   = C.RTLD_LAZY
	RTLDNow    = C.RTLD_NOW
	RTLDGlobal = C.RTLD_GLOBAL
	RTLDLocal  = C.RTLD_LOCAL
)

// DynamicLibrary is a shared library opened at run time with dlopen.
type DynamicLibrary struct {
	Name  string
	Flags int

	mu     sync.Mutex
	handle unsafe.Pointer
}

// NewDynamicLibrary returns an unopened library handle.
func NewDynamicLibrary(name string, flags int) *DynamicLibrary {
	return &DynamicLibrary{Name: name, Flags: flags}
}

// Open loads the library. dlerror is thread-local, so the call and the read of
// its error happen on one locked OS thread.
func (dl *DynamicLibrary) Open() error {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	if dl.handle != nil {
		return nil
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	name := C.CString(dl.Name)
	defer C.free(unsafe.Pointer(name))
	C.dlerror() // clear any stale error
	h := C.dlopen(name, C.int(dl.Flags))
	if h == nil {
		return fmt.Errorf("dlopen %s: %w", dl.Name, dlError())
	}
	dl.handle = h
	return nil
}

// Lookup returns the address of symbol.
func (dl *DynamicLibrary) Lookup(symbol string) (unsafe.Pointer, error) {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	if dl.handle == nil {
		return nil, fmt.Errorf("symbol %q not found: %w", symbol, errors.New("library not open"))
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	sym := C.CString(symbol)
	defer C.free(unsafe.Pointer(sym))
	C.dlerror()
	p := C.dlsym(dl.handle, sym)
	if err := dlError(); err != nil {
		return nil, fmt.Errorf("symbol %q not found: %w", symbol, err)
	}
	if p == nil {
		return nil, fmt.Errorf("symbol %q not found: %w", symbol, errors.New("nil address"))
	}
	return p, nil
}

// Close unloads the library; closing a closed library is a no-op.
func (dl *DynamicLibrary) Close() error {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	if dl.handle == nil {
		return nil
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	C.dlerror()
	if C.dlclose(dl.handle) != 0 {
		return fmt.Errorf("dlclose %s: %w", dl.Name, dlError())
	}
	dl.handle = nil
	return nil
}

func dlError() error {
	e := C.dlerror()
	if e == nil {
		return nil
	}
	return errors.New(C.GoString(e))
}
