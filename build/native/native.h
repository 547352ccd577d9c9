/* The parts of native.node (the C files of build/native), one N-API function each. */
#ifndef OCINET_NATIVE_H
#define OCINET_NATIVE_H
#define NAPI_VERSION 8
#include <node_api.h>

#include <sys/types.h>

/* Throws `what: strerror(err)` and returns NULL. */
napi_value native_fail(napi_env env, const char *what, int err);
/* A JavaScript number. */
napi_value native_int(napi_env env, int32_t n);
/* Milliseconds on the monotonic clock. */
long native_now_ms(void);
/*
 * fork() for a detached helper: in the child (0 returned) every descriptor
 * but keep_a and keep_b (-1: none) is closed, so nobody waiting on this
 * process's pipes waits for it, and it may make system calls only (the
 * child of a threaded process); the parent (its pid returned) reaps it
 * later without blocking, or its heir does. -1 with errno when fork failed.
 */
pid_t native_fork_detached(int keep_a, int keep_b);

napi_value Lock(napi_env env, napi_callback_info info);
napi_value RtnlSocket(napi_env env, napi_callback_info info);
napi_value RtnlTalk(napi_env env, napi_callback_info info);
napi_value RtnlDetached(napi_env env, napi_callback_info info);
napi_value NftRun(napi_env env, napi_callback_info info);
napi_value AgentConnect(napi_env env, napi_callback_info info);
napi_value AgentTake(napi_env env, napi_callback_info info);
napi_value AgentHold(napi_env env, napi_callback_info info);
#endif
