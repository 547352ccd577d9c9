/*
 * native.node: what Node cannot do and the hooks need on their start path,
 * without running a program: flock(2) (lock.c), rtnetlink requests in the
 * hook's or a container's namespace (rtnl.c), nftables transactions through
 * libnftables (nft.c); and a guest agent connection kept between CLI calls
 * (agent.c). Only N-API (node_api.h from Node's own headers): the binary
 * works with every Node version from 20 on. Built by build/build.mjs with cc.
 */
#define _GNU_SOURCE
#include "native.h"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <linux/close_range.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>

napi_value native_fail(napi_env env, const char *what, int err) {
  char msg[256];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
  napi_throw_error(env, NULL, msg);
  return NULL;
}

napi_value native_int(napi_env env, int32_t n) {
  napi_value v;
  napi_create_int32(env, n, &v);
  return v;
}

long native_now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Only syscalls: safe in the child of a fork of a threaded process. */
static void close_all_but(int a, int b) {
  if (a > b) { int t = a; a = b; b = t; }
  unsigned lo = 0;
  int keep[2] = {a, b};
  for (int i = 0; i < 2; i++) {
    if (keep[i] < 0) continue;
    if ((unsigned)keep[i] > lo) syscall(SYS_close_range, lo, (unsigned)keep[i] - 1, 0);
    lo = (unsigned)keep[i] + 1;
  }
  syscall(SYS_close_range, lo, ~0U, 0);
}

/*
 * Children this process forked and does not wait for: each is reaped here,
 * without blocking, by a later call (a long `ocinet gc` collects no zombies),
 * and by whoever inherits it when this process exits. Only our own pids:
 * libuv waits for the children it spawned by theirs.
 */
static void reap_later(int pid) {
  static pid_t pending[64];
  for (size_t i = 0; i < sizeof pending / sizeof pending[0]; i++) {
    if (pending[i] > 0 && waitpid(pending[i], NULL, WNOHANG) != 0) pending[i] = 0;
    if (pid > 0 && pending[i] == 0) {
      pending[i] = pid;
      pid = 0;
    }
  }
}

pid_t native_fork_detached(int keep_a, int keep_b) {
  pid_t pid = fork();
  if (pid == 0) close_all_but(keep_a, keep_b);
  else if (pid > 0) reap_later(pid);
  return pid;
}

NAPI_MODULE_INIT() {
  const struct { const char *name; napi_callback fn; } fns[] = {
    {"lock", Lock}, {"rtnlSocket", RtnlSocket}, {"rtnlTalk", RtnlTalk}, {"rtnlDetached", RtnlDetached}, {"nftRun", NftRun},
    {"agentConnect", AgentConnect}, {"agentTake", AgentTake}, {"agentHold", AgentHold},
  };
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    napi_value fn;
    napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &fn);
    napi_set_named_property(env, exports, fns[i].name, fn);
  }
  return exports;
}
