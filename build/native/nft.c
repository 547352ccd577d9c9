/*
 * nftRun(text, detach): one nftables transaction through libnftables, in
 * this process: what `nft -f -` does, without running it. The library is
 * loaded on first use (dlopen: a machine without it still loads native.node);
 * null when it cannot be, and the caller runs nft instead. Returns
 * { code, out, err }: nft's exit code, its buffered output and errors
 * (nothing reaches the hook's stdout, which is the runtime's).
 *
 * detach: the transaction deletes. Then the kernel frees what it deleted
 * after an RCU grace period, and the last close of the netfilter socket
 * waits for that (10-20 ms here). A detached holder process keeps the
 * socket until this process exits, so that its close is never the last.
 */
#define _GNU_SOURCE
#include "native.h"
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/netlink.h>

struct nft_ctx;
static struct {
  int loaded; /* 0 not tried, 1 ok, -1 unavailable */
  struct nft_ctx *(*ctx_new)(uint32_t);
  void (*ctx_free)(struct nft_ctx *);
  int (*buffer_output)(struct nft_ctx *);
  int (*buffer_error)(struct nft_ctx *);
  const char *(*get_output)(struct nft_ctx *);
  const char *(*get_error)(struct nft_ctx *);
  int (*run_file)(struct nft_ctx *, const char *);
} lib;

static int load(void) {
  if (lib.loaded) return lib.loaded > 0;
  lib.loaded = -1;
  void *h = dlopen("libnftables.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!h) return 0;
  /* dlsym's void * stored into each function pointer (POSIX guarantees it converts). */
#define SYM(field, name) \
  if (!(*(void **)&lib.field = dlsym(h, name))) return 0;
  SYM(ctx_new, "nft_ctx_new")
  SYM(ctx_free, "nft_ctx_free")
  SYM(buffer_output, "nft_ctx_buffer_output")
  SYM(buffer_error, "nft_ctx_buffer_error")
  SYM(get_output, "nft_ctx_get_output_buffer")
  SYM(get_error, "nft_ctx_get_error_buffer")
  SYM(run_file, "nft_run_cmd_from_filename")
#undef SYM
  lib.loaded = 1;
  return 1;
}

/* The netfilter netlink sockets open in this process, as a bitmap of descriptors below 1024. */
static void netfilter_sockets(unsigned char map[128]) {
  memset(map, 0, 128);
  DIR *d = opendir("/proc/self/fd");
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d))) {
    int fd = atoi(e->d_name);
    if (fd <= 2 || fd >= 1024 || fd == dirfd(d)) continue;
    int v;
    socklen_t l = sizeof v;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &v, &l) || v != AF_NETLINK) continue;
    l = sizeof v;
    if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &v, &l) || v != NETLINK_NETFILTER) continue;
    map[fd / 8] |= 1 << (fd % 8);
  }
  closedir(d);
}

/* Hands socket `fd` to a detached process that holds it until this process exits. */
static void hold_until_exit(int fd) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) return;
  pid_t child = native_fork_detached(fd, p[0]); /* it ends after this process: its heir reaps it */
  if (child < 0) {
    close(p[0]);
    close(p[1]);
    return;
  }
  if (child == 0) {
    char c;
    /* EOF when every write end is gone: this process has exited. */
    while (read(p[0], &c, 1) < 0 && errno == EINTR) {
    }
    _exit(0);
  }
  close(p[0]);
  /* p[1] stays open (close-on-exec) for the rest of this process's life. */
}

static napi_value str(napi_env env, const char *s) {
  napi_value v;
  napi_create_string_utf8(env, s ? s : "", NAPI_AUTO_LENGTH, &v);
  return v;
}

napi_value NftRun(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  size_t len = 0;
  bool detach = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 ||
      napi_get_value_string_utf8(env, argv[0], NULL, 0, &len) != napi_ok || napi_get_value_bool(env, argv[1], &detach) != napi_ok) {
    napi_throw_type_error(env, NULL, "nftRun(text, detach)");
    return NULL;
  }
  napi_value out;
  if (!load()) {
    napi_get_null(env, &out);
    return out;
  }
  char *text = malloc(len + 1);
  if (!text) return native_fail(env, "nftRun", ENOMEM);
  napi_get_value_string_utf8(env, argv[0], text, len + 1, &len);
  /* Read as a file, as `nft -f` reads: libnftables 1.0.6 quotes the wrong line of a buffer in its errors. */
  int mem = memfd_create("ocinet-nft", MFD_CLOEXEC);
  if (mem < 0 || write(mem, text, len) != (ssize_t)len) {
    int e = errno;
    free(text);
    if (mem >= 0) close(mem);
    return native_fail(env, "memfd", e);
  }
  free(text);
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", mem);
  unsigned char before[128], after[128];
  if (detach) netfilter_sockets(before);
  struct nft_ctx *ctx = lib.ctx_new(0);
  if (!ctx) {
    close(mem);
    return native_fail(env, "nft_ctx_new", ENOMEM);
  }
  lib.buffer_output(ctx);
  lib.buffer_error(ctx);
  int code = lib.run_file(ctx, path) == 0 ? 0 : 1;
  close(mem);
  napi_create_object(env, &out);
  napi_set_named_property(env, out, "code", native_int(env, code));
  napi_set_named_property(env, out, "out", str(env, lib.get_output(ctx)));
  napi_set_named_property(env, out, "err", str(env, lib.get_error(ctx)));
  if (detach) {
    netfilter_sockets(after);
    for (int fd = 3; fd < 1024; fd++)
      if ((after[fd / 8] & ~before[fd / 8]) & (1 << (fd % 8))) hold_until_exit(fd);
  }
  lib.ctx_free(ctx);
  return out;
}
