package nixl

/*
#include "capi.h"
*/
import "C"

import (
	"fmt"
	"runtime"
	"sort"
	"strings"
	"sync"
	"unsafe"
)

// MemType is where memory lives, as NIXL names it.
type MemType int

const (
	// MemDRAM is host memory (device id 0).
	MemDRAM MemType = 0
	// MemVRAM is GPU memory (device id: the CUDA device ordinal).
	MemVRAM MemType = 1
)

func (m MemType) String() string {
	switch m {
	case MemDRAM:
		return "DRAM"
	case MemVRAM:
		return "VRAM"
	}
	return fmt.Sprintf("mem(%d)", int(m))
}

// Region is a span of memory as NIXL sees it: registered with Register, or one side of a transfer.
type Region struct {
	Addr   uintptr
	Len    int
	Mem    MemType
	Device uint64 // the GPU ordinal for MemVRAM, 0 for MemDRAM
}

// Agent is a NIXL agent with one backend (UCX by default). Its methods are safe for concurrent use: they are
// serialised, as the 1.x C API's default agent is not thread-safe; every call returns quickly (transfers are
// posted and polled, never waited for inside the lock).
type Agent struct {
	name string

	mu      sync.Mutex
	h       C.nixl_handle
	backend C.nixl_handle
	notifs  C.nixl_handle
	regs    []Region
	closed  bool
}

// NewAgent creates an agent named name (unique among the agents it will talk to) with backend plugin
// ("UCX") configured by params over the plugin's defaults. UCX reads its own environment (UCX_TLS,
// UCX_NET_DEVICES, …) here.
func NewAgent(name, plugin string, params map[string]string) (*Agent, error) {
	if err := Load(); err != nil {
		return nil, err
	}
	if name == "" || plugin == "" {
		return nil, fmt.Errorf("%w: agent name %q, plugin %q", ErrOption, name, plugin)
	}
	// The agent's threads are created by NIXL; the calling goroutine needs no locked thread, but a failed
	// constructor must not leave a half-made agent behind.
	a := &Agent{name: name}
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	if err := call("create agent "+name, C.sz_create_agent(capi.createAgent, cname, &a.h)); err != nil {
		return nil, err
	}
	if err := a.createBackend(plugin, params); err != nil {
		C.sz_one(capi.destroyAgent, a.h)
		return nil, err
	}
	if err := call("create notification map", C.sz_out(capi.createNotifMap, &a.notifs)); err != nil {
		C.sz_one(capi.destroyAgent, a.h)
		return nil, err
	}
	return a, nil
}

func (a *Agent) createBackend(plugin string, params map[string]string) error {
	cplugin := C.CString(plugin)
	defer C.free(unsafe.Pointer(cplugin))
	var mems, cparams C.nixl_handle
	if err := call("plugin parameters of "+plugin, C.sz_get_plugin_params(capi.getPluginParams, a.h, cplugin, &mems, &cparams)); err != nil {
		return fmt.Errorf("%w (plugins found: %s)", err, a.plugins())
	}
	defer C.sz_one(capi.destroyMemList, mems)
	defer C.sz_one(capi.destroyParams, cparams)
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		ck, cv := C.CString(k), C.CString(params[k])
		st := C.sz_params_add(capi.paramsAdd, cparams, ck, cv)
		C.free(unsafe.Pointer(ck))
		C.free(unsafe.Pointer(cv))
		if err := call("backend parameter "+k, st); err != nil {
			return err
		}
	}
	return call("create backend "+plugin, C.sz_create_backend(capi.createBackend, a.h, cplugin, cparams, &a.backend))
}

// plugins lists the backend plugins the library found, for error messages.
func (a *Agent) plugins() string {
	var list C.nixl_handle
	if C.sz_handle_out(capi.getAvailablePlugins, a.h, &list) != 0 {
		return "unknown"
	}
	defer C.sz_one(capi.destroyString, list)
	var n C.size_t
	if C.sz_list_size(capi.stringListSize, list, &n) != 0 {
		return "unknown"
	}
	var names []string
	for i := range C.size_t(n) {
		var s *C.char
		if C.sz_list_get(capi.stringListGet, list, i, &s) == 0 {
			names = append(names, C.GoString(s))
		}
	}
	if len(names) == 0 {
		return "none (is NIXL_PLUGIN_DIR right?)"
	}
	return strings.Join(names, ", ")
}

// Name is the agent's name.
func (a *Agent) Name() string { return a.name }

func (a *Agent) lock() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return ErrClosed
	}
	return nil
}

// regList builds a registration descriptor list of one region.
func regList(r Region) (C.nixl_handle, error) {
	var l C.nixl_handle
	if err := call("create registration list", C.sz_create_dlist(capi.createRegDlist, C.int(r.Mem), &l)); err != nil {
		return nil, err
	}
	if err := call("add registration descriptor", C.sz_reg_add(capi.regDlistAddDesc, l, C.uintptr_t(r.Addr), C.size_t(r.Len), C.uint64_t(r.Device))); err != nil {
		C.sz_one(capi.destroyRegDlist, l)
		return nil, err
	}
	return l, nil
}

// Register makes r readable and writable by this agent's transfers, and by peers that load this agent's
// metadata afterwards (Metadata changes).
func (a *Agent) Register(r Region) error {
	if r.Addr == 0 || r.Len <= 0 {
		return fmt.Errorf("%w: register %d bytes at %#x", ErrOption, r.Len, r.Addr)
	}
	if err := a.lock(); err != nil {
		return err
	}
	defer a.mu.Unlock()
	l, err := regList(r)
	if err != nil {
		return err
	}
	defer C.sz_one(capi.destroyRegDlist, l)
	if err := call(fmt.Sprintf("register %d bytes of %s", r.Len, r.Mem), C.sz_agent_list(capi.registerMem, a.h, l)); err != nil {
		return err
	}
	a.regs = append(a.regs, r)
	return nil
}

// Deregister undoes Register of the same region.
func (a *Agent) Deregister(r Region) error {
	if err := a.lock(); err != nil {
		return err
	}
	defer a.mu.Unlock()
	return a.deregisterLocked(r)
}

func (a *Agent) deregisterLocked(r Region) error {
	i := -1
	for j, g := range a.regs {
		if g == r {
			i = j
		}
	}
	if i < 0 {
		return fmt.Errorf("%w: %d bytes at %#x were not registered", ErrOption, r.Len, r.Addr)
	}
	l, err := regList(r)
	if err != nil {
		return err
	}
	defer C.sz_one(capi.destroyRegDlist, l)
	a.regs = append(a.regs[:i], a.regs[i+1:]...)
	return call("deregister", C.sz_agent_list(capi.deregisterMem, a.h, l))
}

// Metadata returns what a peer loads (LoadRemote) to reach this agent and its registered memory.
func (a *Agent) Metadata() ([]byte, error) {
	if err := a.lock(); err != nil {
		return nil, err
	}
	defer a.mu.Unlock()
	var data unsafe.Pointer
	var n C.size_t
	if err := call("local metadata", C.sz_get_local_md(capi.getLocalMD, a.h, &data, &n)); err != nil {
		return nil, err
	}
	defer C.free(data) // malloc'd by the C API
	return C.GoBytes(data, C.int(n)), nil
}

// LoadRemote loads a peer's metadata and returns the peer's agent name.
func (a *Agent) LoadRemote(md []byte) (string, error) {
	if len(md) == 0 {
		return "", fmt.Errorf("%w: empty agent metadata", ErrLocator)
	}
	if err := a.lock(); err != nil {
		return "", err
	}
	defer a.mu.Unlock()
	cmd := C.CBytes(md)
	defer C.free(cmd)
	var name *C.char
	if err := call("load remote metadata", C.sz_load_remote_md(capi.loadRemoteMD, a.h, cmd, C.size_t(len(md)), &name)); err != nil {
		return "", err
	}
	defer C.free(unsafe.Pointer(name)) // strdup'd by the C API
	return C.GoString(name), nil
}

// ForgetRemote drops a peer's metadata (and its connection).
func (a *Agent) ForgetRemote(peer string) error {
	if err := a.lock(); err != nil {
		return err
	}
	defer a.mu.Unlock()
	cpeer := C.CString(peer)
	defer C.free(unsafe.Pointer(cpeer))
	return call("invalidate remote metadata of "+peer, C.sz_agent_name(capi.invalidateRemoteMD, a.h, cpeer))
}

// xferList builds a transfer descriptor list.
func xferList(rs []Region) (C.nixl_handle, error) {
	var l C.nixl_handle
	if err := call("create transfer list", C.sz_create_dlist(capi.createXferDlist, C.int(rs[0].Mem), &l)); err != nil {
		return nil, err
	}
	for _, r := range rs {
		if r.Mem != rs[0].Mem {
			C.sz_one(capi.destroyXferDlist, l)
			return nil, fmt.Errorf("%w: a transfer list mixes %s and %s", ErrOption, rs[0].Mem, r.Mem)
		}
		if err := call("add transfer descriptor", C.sz_xfer_add(capi.xferDlistAddDesc, l, C.uintptr_t(r.Addr), C.size_t(r.Len), C.uint64_t(r.Device))); err != nil {
			C.sz_one(capi.destroyXferDlist, l)
			return nil, err
		}
	}
	return l, nil
}

// Xfer is a posted transfer. Poll it until it is done; then Release it.
type Xfer struct {
	a    *Agent
	req  C.nixl_handle
	done bool
}

// Read posts a one-sided read of the peer's remote regions into local ones (pairwise, equal lengths; local
// memory registered with this agent, remote memory with the peer, whose metadata is loaded).
func (a *Agent) Read(peer string, local, remote []Region) (*Xfer, error) {
	if len(local) == 0 || len(local) != len(remote) {
		return nil, fmt.Errorf("%w: read of %d remote regions into %d local ones", ErrOption, len(remote), len(local))
	}
	for i := range local {
		if local[i].Len != remote[i].Len {
			return nil, fmt.Errorf("%w: read of %d bytes into %d", ErrOption, remote[i].Len, local[i].Len)
		}
	}
	if err := a.lock(); err != nil {
		return nil, err
	}
	defer a.mu.Unlock()
	ll, err := xferList(local)
	if err != nil {
		return nil, err
	}
	defer C.sz_one(capi.destroyXferDlist, ll)
	rl, err := xferList(remote)
	if err != nil {
		return nil, err
	}
	defer C.sz_one(capi.destroyXferDlist, rl)
	cpeer := C.CString(peer)
	defer C.free(unsafe.Pointer(cpeer))
	x := &Xfer{a: a}
	if err := call("create read from "+peer, C.sz_create_xfer_req(capi.createXferReq, a.h, 0, ll, rl, cpeer, &x.req)); err != nil {
		return nil, err
	}
	switch st := Status(C.sz_post_xfer_req(capi.postXferReq, a.h, x.req)); st {
	case StatusSuccess:
		x.done = true
	case StatusInProgress:
	default:
		x.releaseLocked()
		return nil, fmt.Errorf("%w: post read from %s: %w", ErrCall, peer, st)
	}
	return x, nil
}

// Poll reports whether the transfer is done; an error means it failed (the peer is gone, or its memory is).
func (x *Xfer) Poll() (bool, error) {
	if x.done {
		return true, nil
	}
	if err := x.a.lock(); err != nil {
		return false, err
	}
	defer x.a.mu.Unlock()
	switch st := Status(C.sz_agent_req(capi.getXferStatus, x.a.h, x.req)); st {
	case StatusSuccess:
		x.done = true
		return true, nil
	case StatusInProgress:
		return false, nil
	default:
		return false, fmt.Errorf("%w: transfer status: %w", ErrCall, st)
	}
}

// Release frees the transfer. Releasing one still in progress asks NIXL to cancel it; when that fails the
// error says so and the local memory it writes must not be reused.
func (x *Xfer) Release() error {
	if x.req == nil {
		return nil
	}
	if err := x.a.lock(); err != nil {
		return err
	}
	defer x.a.mu.Unlock()
	return x.releaseLocked()
}

func (x *Xfer) releaseLocked() error {
	if err := call("release transfer", C.sz_agent_req(capi.releaseXferReq, x.a.h, x.req)); err != nil {
		return err
	}
	C.sz_one(capi.destroyXferReq, x.req)
	x.req = nil
	return nil
}

// Notify sends a short message to a peer whose metadata is loaded; the peer's Notifications return it.
func (a *Agent) Notify(peer string, msg []byte) error {
	if err := a.lock(); err != nil {
		return err
	}
	defer a.mu.Unlock()
	cpeer := C.CString(peer)
	defer C.free(unsafe.Pointer(cpeer))
	var data unsafe.Pointer
	if len(msg) > 0 {
		data = C.CBytes(msg)
		defer C.free(data)
	}
	return call("notify "+peer, C.sz_gen_notif(capi.genNotif, a.h, cpeer, data, C.size_t(len(msg))))
}

// Notification is a message a peer sent with Notify.
type Notification struct {
	From string
	Msg  []byte
}

// Notifications returns the messages received since the last call.
func (a *Agent) Notifications() ([]Notification, error) {
	if err := a.lock(); err != nil {
		return nil, err
	}
	defer a.mu.Unlock()
	if err := call("get notifications", C.sz_get_notifs(capi.getNotifs, a.h, a.notifs)); err != nil {
		return nil, err
	}
	defer C.sz_one(capi.notifMapClear, a.notifs)
	var n C.size_t
	if err := call("notification count", C.sz_list_size(capi.notifMapSize, a.notifs, &n)); err != nil || n == 0 {
		return nil, err
	}
	var out []Notification
	for i := range n {
		var name *C.char
		if err := call("notification sender", C.sz_map_agent_at(capi.notifMapAgentAt, a.notifs, i, &name)); err != nil {
			return out, err
		}
		from := C.GoString(name)
		var m C.size_t
		if err := call("notifications of "+from, C.sz_map_notifs_size(capi.notifMapNotifsSize, a.notifs, name, &m)); err != nil {
			return out, err
		}
		for j := range m {
			var data unsafe.Pointer
			var dn C.size_t
			if err := call("notification", C.sz_map_notif(capi.notifMapNotif, a.notifs, name, j, &data, &dn)); err != nil {
				return out, err
			}
			out = append(out, Notification{From: from, Msg: C.GoBytes(data, C.int(dn))})
		}
	}
	return out, nil
}

// Close deregisters what is still registered and destroys the agent; transfers must be released first.
func (a *Agent) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil
	}
	var err error
	for len(a.regs) > 0 {
		if e := a.deregisterLocked(a.regs[len(a.regs)-1]); e != nil && err == nil {
			err = e
		}
	}
	C.sz_one(capi.destroyNotifMap, a.notifs)
	if e := call("destroy agent", C.sz_one(capi.destroyAgent, a.h)); e != nil && err == nil {
		err = e
	}
	a.closed = true
	runtime.KeepAlive(a)
	return err
}
