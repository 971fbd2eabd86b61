package nixl

/*
#cgo LDFLAGS: -ldl
#include "capi.h"
*/
import "C"

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"unsafe"

	"github.com/splitzip/splitzip/kernels/cuda"
)

// libraryEnv names an environment variable holding the path of libnixl_capi.so, or of the directory holding
// it; it is tried first.
const libraryEnv = "SPLITZIP_NIXL_LIB"

const libraryName = "libnixl_capi.so"

// libraryCandidates lists where the library is looked for, in order: SPLITZIP_NIXL_LIB; the soname through
// the loader's search path (LD_LIBRARY_PATH, ldconfig); the nixl Python wheels (nixl-cu12, nixl-cu13, nixl)
// in the active virtual environment, conda environment, user site and system site directories; NIXL's own
// install prefixes.
func libraryCandidates() []string {
	var out []string
	if p := cuda.Getenv(libraryEnv); p != "" {
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			p = filepath.Join(p, libraryName)
		}
		out = append(out, p)
	}
	out = append(out, libraryName)
	var prefixes []string
	for _, env := range []string{"VIRTUAL_ENV", "CONDA_PREFIX"} {
		if p := cuda.Getenv(env); p != "" {
			prefixes = append(prefixes, p)
		}
	}
	if home := cuda.Getenv("HOME"); home != "" {
		prefixes = append(prefixes, filepath.Join(home, ".local"))
	}
	prefixes = append(prefixes, "/usr/local", "/usr", "/opt/conda")
	if root := cuda.Getenv("PYENV_ROOT"); root != "" {
		if vs, _ := filepath.Glob(filepath.Join(root, "versions", "*")); len(vs) > 0 {
			prefixes = append(prefixes, vs...)
		}
	}
	for _, pre := range prefixes {
		for _, site := range []string{"site-packages", "dist-packages"} {
			// The wheels keep their libraries in a hidden folder beside the package (meson-python's layout).
			m, _ := filepath.Glob(filepath.Join(pre, "lib", "python3*", site, ".nixl*.mesonpy.libs", libraryName))
			out = append(out, m...)
		}
	}
	return append(out,
		"/opt/nvidia/nvda_nixl/lib/x86_64-linux-gnu/"+libraryName,
		"/opt/nvidia/nvda_nixl/lib/aarch64-linux-gnu/"+libraryName,
		"/opt/nvidia/nvda_nixl/lib64/"+libraryName,
		"/usr/local/nixl/lib/x86_64-linux-gnu/"+libraryName,
	)
}

// entry points, resolved by load.
type capiTable struct {
	createAgent, destroyAgent                                         unsafe.Pointer
	getAvailablePlugins, stringListSize, stringListGet, destroyString unsafe.Pointer
	getPluginParams, paramsAdd, destroyMemList, destroyParams         unsafe.Pointer
	createBackend, destroyBackend                                     unsafe.Pointer
	createRegDlist, regDlistAddDesc, destroyRegDlist                  unsafe.Pointer
	registerMem, deregisterMem                                        unsafe.Pointer
	getLocalMD, loadRemoteMD, invalidateRemoteMD                      unsafe.Pointer
	createXferDlist, xferDlistAddDesc, destroyXferDlist               unsafe.Pointer
	createXferReq, postXferReq, getXferStatus                         unsafe.Pointer
	releaseXferReq, destroyXferReq                                    unsafe.Pointer
	genNotif, createNotifMap, getNotifs, destroyNotifMap              unsafe.Pointer
	notifMapSize, notifMapAgentAt, notifMapNotifsSize, notifMapNotif  unsafe.Pointer
	notifMapClear                                                     unsafe.Pointer
}

var (
	loadOnce sync.Once
	loadErr  error
	lib      *cuda.DynamicLibrary
	capi     capiTable
)

// Load loads libnixl_capi.so once and resolves the entry points this package calls. It returns an error
// wrapping ErrNoLibrary on a host without the library (nothing panics or exits) and ErrLibrary when the
// library lacks an entry point. Every constructor calls it.
func Load() error {
	loadOnce.Do(func() { loadErr = load() })
	return loadErr
}

// Loaded reports whether the library is loaded.
func Loaded() bool { return Load() == nil }

// LibraryPath is the path the library was loaded from ("" before a successful Load).
func LibraryPath() string {
	if Load() != nil {
		return ""
	}
	return lib.Name
}

func load() error {
	var tried []string
	for _, name := range libraryCandidates() {
		l := cuda.NewDynamicLibrary(name, cuda.RTLDLazy|cuda.RTLDGlobal)
		if err := l.Open(); err != nil {
			tried = append(tried, err.Error())
			continue
		}
		lib = l
		break
	}
	if lib == nil {
		return fmt.Errorf("%w: %s", ErrNoLibrary, strings.Join(tried[:min(len(tried), 2)], "; "))
	}
	syms := []struct {
		dst  *unsafe.Pointer
		name string
	}{
		{&capi.createAgent, "nixl_capi_create_agent"},
		{&capi.destroyAgent, "nixl_capi_destroy_agent"},
		{&capi.getAvailablePlugins, "nixl_capi_get_available_plugins"},
		{&capi.stringListSize, "nixl_capi_string_list_size"},
		{&capi.stringListGet, "nixl_capi_string_list_get"},
		{&capi.destroyString, "nixl_capi_destroy_string_list"},
		{&capi.getPluginParams, "nixl_capi_get_plugin_params"},
		{&capi.paramsAdd, "nixl_capi_params_add"},
		{&capi.destroyMemList, "nixl_capi_destroy_mem_list"},
		{&capi.destroyParams, "nixl_capi_destroy_params"},
		{&capi.createBackend, "nixl_capi_create_backend"},
		{&capi.destroyBackend, "nixl_capi_destroy_backend"},
		{&capi.createRegDlist, "nixl_capi_create_reg_dlist"},
		{&capi.regDlistAddDesc, "nixl_capi_reg_dlist_add_desc"},
		{&capi.destroyRegDlist, "nixl_capi_destroy_reg_dlist"},
		{&capi.registerMem, "nixl_capi_register_mem"},
		{&capi.deregisterMem, "nixl_capi_deregister_mem"},
		{&capi.getLocalMD, "nixl_capi_get_local_md"},
		{&capi.loadRemoteMD, "nixl_capi_load_remote_md"},
		{&capi.invalidateRemoteMD, "nixl_capi_invalidate_remote_md"},
		{&capi.createXferDlist, "nixl_capi_create_xfer_dlist"},
		{&capi.xferDlistAddDesc, "nixl_capi_xfer_dlist_add_desc"},
		{&capi.destroyXferDlist, "nixl_capi_destroy_xfer_dlist"},
		{&capi.createXferReq, "nixl_capi_create_xfer_req"},
		{&capi.postXferReq, "nixl_capi_post_xfer_req"},
		{&capi.getXferStatus, "nixl_capi_get_xfer_status"},
		{&capi.releaseXferReq, "nixl_capi_release_xfer_req"},
		{&capi.destroyXferReq, "nixl_capi_destroy_xfer_req"},
		{&capi.genNotif, "nixl_capi_gen_notif"},
		{&capi.createNotifMap, "nixl_capi_create_notif_map"},
		{&capi.getNotifs, "nixl_capi_get_notifs"},
		{&capi.destroyNotifMap, "nixl_capi_destroy_notif_map"},
		{&capi.notifMapSize, "nixl_capi_notif_map_size"},
		{&capi.notifMapAgentAt, "nixl_capi_notif_map_get_agent_at"},
		{&capi.notifMapNotifsSize, "nixl_capi_notif_map_get_notifs_size"},
		{&capi.notifMapNotif, "nixl_capi_notif_map_get_notif"},
		{&capi.notifMapClear, "nixl_capi_notif_map_clear"},
	}
	for _, s := range syms {
		p, err := lib.Lookup(s.name)
		if err != nil {
			return fmt.Errorf("%w (%s): %w", ErrLibrary, lib.Name, err)
		}
		*s.dst = p
	}
	return nil
}

// call turns a C status into an error wrapping ErrCall and the Status, naming the operation.
func call(op string, st C.nixl_status) error {
	if s := Status(st); s != StatusSuccess {
		return fmt.Errorf("%w: %s: %w", ErrCall, op, s)
	}
	return nil
}
