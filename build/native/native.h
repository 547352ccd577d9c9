/* The parts of native.node (the C files of build/native), one N-API function each. */
#ifndef OCINET_NATIVE_H
#define OCINET_NATIVE_H
#define NAPI_VERSION 8
#include <node_api.h>

/* Throws `what: strerror(err)` and returns NULL. */
napi_value native_fail(napi_env env, const char *what, int err);
/* Closes every descriptor but keep (-1: none); for a forked child before it waits. */
void native_close_all_but(int keep_a, int keep_b);
/* Remembers a child not waited for, and reaps those of them that have ended. */
void native_reap_later(int pid);

napi_value Lock(napi_env env, napi_callback_info info);
napi_value RtnlSocket(napi_env env, napi_callback_info info);
napi_value RtnlTalk(napi_env env, napi_callback_info info);
napi_value RtnlDetached(napi_env env, napi_callback_info info);
napi_value NftRun(napi_env env, napi_callback_info info);
napi_value AgentConnect(napi_env env, napi_callback_info info);
napi_value AgentTake(napi_env env, napi_callback_info info);
napi_value AgentHold(napi_env env, napi_callback_info info);
#endif
