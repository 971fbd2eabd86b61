package nixl

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// The tests need libnixl_capi.so with UCX: `make nixl` unpacks the nixl-cu13 wheel into build/nixl/wheel,
// and the Makefile exports SPLITZIP_NIXL_LIB pointing there. Without the library they skip, saying why —
// unless SPLITZIP_NIXL_LIB is set, which makes a library that does not load a failure: CI must not skip
// silently. UCX runs over TCP and shared memory (UCX_TLS, unless the caller set it).

func TestMain(m *testing.M) {
	if os.Getenv(libraryEnv) == "" {
		_, file, _, _ := runtime.Caller(0)
		lib := filepath.Join(filepath.Dir(file), "..", "..", "build", "nixl", "wheel", ".nixl_cu13.mesonpy.libs", libraryName)
		if _, err := os.Stat(lib); err == nil {
			os.Setenv(libraryEnv, lib)
			os.Setenv("SPLITZIP_NIXL_LIB_FOUND_BY_TEST", "1")
		}
	}
	if os.Getenv("UCX_TLS") == "" {
		os.Setenv("UCX_TLS", "tcp,sm,self")
	}
	os.Exit(m.Run())
}

// needLibrary skips t without the library, or fails it where SPLITZIP_NIXL_LIB demanded one.
func needLibrary(t testing.TB) {
	t.Helper()
	err := Load()
	if err == nil {
		return
	}
	if os.Getenv(libraryEnv) != "" && os.Getenv("SPLITZIP_NIXL_LIB_FOUND_BY_TEST") == "" {
		t.Fatalf("%s is set but the library does not load: %v", libraryEnv, err)
	}
	if !errors.Is(err, ErrNoLibrary) {
		t.Fatalf("loading NIXL: %v", err)
	}
	t.Skipf("no NIXL library (make nixl fetches one into build/nixl): %v", err)
}

var agentSeq int

// newTestAgent returns a UCX agent closed with the test.
func newTestAgent(t testing.TB) *Agent {
	t.Helper()
	needLibrary(t)
	agentSeq++
	a, err := NewAgent(fmt.Sprintf("test-%d-%d", os.Getpid(), agentSeq), "UCX", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	return a
}

func errorsIs(err, target error) bool { return errors.Is(err, target) }
