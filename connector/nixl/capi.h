// Code for package nixl's cgo preambles: the types of NIXL's C API and call trampolines. Deliberately free of
// NIXL headers: the few types are declared here from src/bindings/rust/wrapper.h of ai-dynamo/nixl (1.x), and
// every entry point is called through a pointer that load() resolved with dlsym, so nothing links against the
// library at build time.
#ifndef SPLITZIP_NIXL_CAPI_H
#define SPLITZIP_NIXL_CAPI_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

typedef int nixl_status;   // nixl_capi_status_t
typedef void *nixl_handle; // every opaque nixl_capi_*_t

#define FN(T) ((T)f)

// Agents, plugins, backends.
static inline nixl_status sz_create_agent(void *f, const char *name, nixl_handle *out) { return FN(nixl_status (*)(const char *, nixl_handle *))(name, out); }
static inline nixl_status sz_one(void *f, nixl_handle h) { return FN(nixl_status (*)(nixl_handle))(h); }
static inline nixl_status sz_out(void *f, nixl_handle *out) { return FN(nixl_status (*)(nixl_handle *))(out); }
static inline nixl_status sz_get_plugin_params(void *f, nixl_handle agent, const char *plugin, nixl_handle *mems, nixl_handle *params) {
	return FN(nixl_status (*)(nixl_handle, const char *, nixl_handle *, nixl_handle *))(agent, plugin, mems, params);
}
static inline nixl_status sz_params_add(void *f, nixl_handle params, const char *key, const char *value) {
	return FN(nixl_status (*)(nixl_handle, const char *, const char *))(params, key, value);
}
static inline nixl_status sz_create_backend(void *f, nixl_handle agent, const char *plugin, nixl_handle params, nixl_handle *out) {
	return FN(nixl_status (*)(nixl_handle, const char *, nixl_handle, nixl_handle *))(agent, plugin, params, out);
}
static inline nixl_status sz_handle_out(void *f, nixl_handle h, nixl_handle *out) { return FN(nixl_status (*)(nixl_handle, nixl_handle *))(h, out); }
static inline nixl_status sz_list_size(void *f, nixl_handle list, size_t *n) { return FN(nixl_status (*)(nixl_handle, size_t *))(list, n); }
static inline nixl_status sz_list_get(void *f, nixl_handle list, size_t i, const char **s) { return FN(nixl_status (*)(nixl_handle, size_t, const char **))(list, i, s); }

// Descriptor lists. The creators of 1.x take (mem_type, out) or (mem_type, out, sorted): the extra argument is
// passed always, which the System V calling convention makes harmless where it is not read.
static inline nixl_status sz_create_dlist(void *f, int mem, nixl_handle *out) { return FN(nixl_status (*)(int, nixl_handle *, bool))(mem, out, false); }
static inline nixl_status sz_reg_add(void *f, nixl_handle l, uintptr_t addr, size_t len, uint64_t dev) {
	return FN(nixl_status (*)(nixl_handle, uintptr_t, size_t, uint64_t, const void *, size_t))(l, addr, len, dev, NULL, 0);
}
static inline nixl_status sz_xfer_add(void *f, nixl_handle l, uintptr_t addr, size_t len, uint64_t dev) {
	return FN(nixl_status (*)(nixl_handle, uintptr_t, size_t, uint64_t))(l, addr, len, dev);
}

// Registration, metadata, transfers, notifications.
static inline nixl_status sz_agent_list(void *f, nixl_handle agent, nixl_handle list) { return FN(nixl_status (*)(nixl_handle, nixl_handle, nixl_handle))(agent, list, NULL); }
static inline nixl_status sz_get_local_md(void *f, nixl_handle agent, void **data, size_t *len) { return FN(nixl_status (*)(nixl_handle, void **, size_t *))(agent, data, len); }
static inline nixl_status sz_load_remote_md(void *f, nixl_handle agent, const void *data, size_t len, char **name) {
	return FN(nixl_status (*)(nixl_handle, const void *, size_t, char **))(agent, data, len, name);
}
static inline nixl_status sz_agent_name(void *f, nixl_handle agent, const char *name) { return FN(nixl_status (*)(nixl_handle, const char *))(agent, name); }
static inline nixl_status sz_create_xfer_req(void *f, nixl_handle agent, int op, nixl_handle local, nixl_handle remote, const char *peer, nixl_handle *req) {
	return FN(nixl_status (*)(nixl_handle, int, nixl_handle, nixl_handle, const char *, nixl_handle *, nixl_handle))(agent, op, local, remote, peer, req, NULL);
}
static inline nixl_status sz_agent_req(void *f, nixl_handle agent, nixl_handle req) { return FN(nixl_status (*)(nixl_handle, nixl_handle))(agent, req); }
static inline nixl_status sz_post_xfer_req(void *f, nixl_handle agent, nixl_handle req) { return FN(nixl_status (*)(nixl_handle, nixl_handle, nixl_handle))(agent, req, NULL); }
static inline nixl_status sz_gen_notif(void *f, nixl_handle agent, const char *peer, const void *data, size_t len) {
	return FN(nixl_status (*)(nixl_handle, const char *, const void *, size_t, nixl_handle))(agent, peer, data, len, NULL);
}
static inline nixl_status sz_get_notifs(void *f, nixl_handle agent, nixl_handle map) { return FN(nixl_status (*)(nixl_handle, nixl_handle, nixl_handle))(agent, map, NULL); }
static inline nixl_status sz_map_agent_at(void *f, nixl_handle map, size_t i, const char **name) { return FN(nixl_status (*)(nixl_handle, size_t, const char **))(map, i, name); }
static inline nixl_status sz_map_notifs_size(void *f, nixl_handle map, const char *name, size_t *n) { return FN(nixl_status (*)(nixl_handle, const char *, size_t *))(map, name, n); }
static inline nixl_status sz_map_notif(void *f, nixl_handle map, const char *name, size_t i, const void **data, size_t *len) {
	return FN(nixl_status (*)(nixl_handle, const char *, size_t, const void **, size_t *))(map, name, i, data, len);
}
#endif
