/*
 * lock(path): flock(2) for core/state/lock.ts (Node has no flock). Opens
 * the lock file (created 0600, never through a symlink, close-on-exec so no
 * child program inherits the lock) and tries to take an exclusive lock
 * without waiting. Returns the descriptor (closing it releases the lock; the
 * kernel closes it when the process dies, SIGKILL too), or -1 when another
 * open file holds the lock.
 */
#include "native.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>


napi_value Lock(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  char path[4096];
  size_t len = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_string_utf8(env, argv[0], path, sizeof path, &len) != napi_ok || len >= sizeof path - 1) {
    napi_throw_type_error(env, NULL, "lock(path): path must be a string shorter than 4095 bytes");
    return NULL;
  }
  int fd;
  do fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) return native_fail(env, "open", errno);
  int r;
  do r = flock(fd, LOCK_EX | LOCK_NB);
  while (r < 0 && errno == EINTR);
  if (r < 0) {
    int err = errno;
    close(fd);
    if (err != EWOULDBLOCK) return native_fail(env, "flock", err);
    fd = -1;
  }
  return native_int(env, fd);
}
