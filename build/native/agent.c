/*
 * A guest agent connection kept between ocinet calls (core/vm/agent-hold.ts).
 * qemu-ga on a virtio-serial port reads the port only every 100 ms while no
 * host client is connected, so a new connection waits up to that long for its
 * first answer. A call that ends hands its connection to a detached holder,
 * which lends it (SCM_RIGHTS) to the next call over a socket in the state dir,
 * to one call at a time and only to the holder's own user, and closes it
 * after lingerMs without a call or as soon as QEMU closes it.
 *
 *   agentConnect(path, timeoutMs)         a connection to QEMU's socket: fd, or -errno
 *   agentTake(hold, agentPath, timeoutMs) [agentFd, leaseFd] lent by a holder, or -errno;
 *                                         closing leaseFd gives the connection back, a byte
 *                                         written to it first has the holder close it
 *   agentHold(fd, hold, lingerMs)         0 once a holder has fd, or an errno
 */
#define _GNU_SOURCE
#include "native.h"
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* A socket path and its NUL, one byte over what a sockaddr_un holds: longer ones are refused. */
#define SUN_PATH_BUF (sizeof(((struct sockaddr_un *)0)->sun_path) + 1)

static int addr_of(const char *path, struct sockaddr_un *a) {
  size_t n = strlen(path);
  if (n == 0 || n >= sizeof a->sun_path) return ENAMETOOLONG;
  memset(a, 0, sizeof *a);
  a->sun_family = AF_UNIX;
  memcpy(a->sun_path, path, n);
  return 0;
}

static int get_path(napi_env env, napi_value v, char *buf, size_t size) {
  size_t len = 0;
  return napi_get_value_string_utf8(env, v, buf, size, &len) == napi_ok && len > 0 && len < size - 1;
}

/* -e, once fd is closed and the socket file it bound (bound, if any) removed: every failure after a socket. */
static int dropped(int fd, const char *bound, int e) {
  if (bound) unlink(bound);
  close(fd);
  return -e;
}

/* A stream connection to path (close-on-exec), or -errno. A full listen queue waits up to timeout_ms. */
static int connect_to(const char *path, int timeout_ms) {
  struct sockaddr_un a;
  int e = addr_of(path, &a);
  if (e) return -e;
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return -errno;
  struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int r;
  do r = connect(s, (struct sockaddr *)&a, sizeof a);
  while (r < 0 && errno == EINTR);
  if (r < 0) return dropped(s, NULL, errno == EAGAIN ? ETIMEDOUT : errno);
  return s;
}

napi_value AgentConnect(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  char path[SUN_PATH_BUF];
  int32_t timeout_ms;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 || napi_get_value_int32(env, argv[1], &timeout_ms) != napi_ok ||
      timeout_ms < 0) {
    napi_throw_type_error(env, NULL, "agentConnect(path, timeoutMs)");
    return NULL;
  }
  /* A path too long for a socket address is the caller's to report. */
  if (!get_path(env, argv[0], path, sizeof path)) return native_int(env, -ENAMETOOLONG);
  return native_int(env, connect_to(path, timeout_ms));
}

/* The lent descriptor is a live connection to the socket at path: not another agent's, not one QEMU closed. */
static int is_agent(int fd, const char *path) {
  struct sockaddr_un peer;
  socklen_t len = sizeof peer;
  int type = 0;
  socklen_t tl = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 || type != SOCK_STREAM) return 0;
  memset(&peer, 0, sizeof peer);
  if (getpeername(fd, (struct sockaddr *)&peer, &len) < 0 || peer.sun_family != AF_UNIX) return 0;
  peer.sun_path[sizeof peer.sun_path - 1] = 0;
  if (strcmp(peer.sun_path, path) != 0) {
    /* The same socket file named another way (QEMU's spelling of its path, a symlink). */
    struct stat a, b;
    if (peer.sun_path[0] == 0 || stat(peer.sun_path, &a) < 0 || stat(path, &b) < 0 || a.st_dev != b.st_dev || a.st_ino != b.st_ino) return 0;
  }
  struct pollfd p = {.fd = fd, .events = POLLRDHUP};
  return poll(&p, 1, 0) == 0;
}

napi_value AgentTake(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  char hold[SUN_PATH_BUF], agent[4096];
  int32_t timeout_ms;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 || !get_path(env, argv[0], hold, sizeof hold) ||
      !get_path(env, argv[1], agent, sizeof agent) || napi_get_value_int32(env, argv[2], &timeout_ms) != napi_ok || timeout_ms < 0) {
    napi_throw_type_error(env, NULL, "agentTake(holdPath, agentPath, timeoutMs)");
    return NULL;
  }
  int s = connect_to(hold, timeout_ms);
  if (s < 0) return native_int(env, s);
  struct ucred cred;
  socklen_t cl = sizeof cred;
  if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0 || cred.uid != geteuid()) return native_int(env, dropped(s, NULL, EPERM));
  /* The holder answers once it has no other borrower: up to timeout_ms (SO_RCVTIMEO). */
  char byte;
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } ctl;
  struct iovec iov = {&byte, 1};
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
  ssize_t n;
  do n = recvmsg(s, &m, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n <= 0) return native_int(env, dropped(s, NULL, n == 0 ? EPIPE : errno == EAGAIN ? ETIMEDOUT : errno));
  int fd = -1;
  struct cmsghdr *c = CMSG_FIRSTHDR(&m);
  if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(sizeof(int))) memcpy(&fd, CMSG_DATA(c), sizeof fd);
  /* Not a live connection to the agent named: another agent's, or one QEMU closed. */
  int bad = fd < 0 || (m.msg_flags & MSG_CTRUNC) ? EPROTO : !is_agent(fd, agent) ? ESTALE : 0;
  if (bad) {
    if (fd >= 0) close(fd);
    return native_int(env, dropped(s, NULL, bad));
  }
  napi_value out;
  napi_create_array_with_length(env, 2, &out);
  napi_set_element(env, out, 0, native_int(env, fd));
  napi_set_element(env, out, 1, native_int(env, s));
  return out;
}

/* One byte carrying the agent connection. */
static int lend(int c, int agent) {
  char byte = 0;
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } ctl;
  memset(&ctl, 0, sizeof ctl);
  struct iovec iov = {&byte, 1};
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
  struct cmsghdr *h = CMSG_FIRSTHDR(&m);
  h->cmsg_level = SOL_SOCKET;
  h->cmsg_type = SCM_RIGHTS;
  h->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(h), &agent, sizeof agent);
  return sendmsg(c, &m, MSG_NOSIGNAL) == 1;
}

/*
 * The holder: system calls only (the child of a threaded process). It never
 * reads the agent connection: borrowers drop replies that are not theirs.
 */
static void holder(int agent, int l, int linger_ms, const char *hold, dev_t dev, ino_t ino) {
  uid_t me = geteuid();
  /* SIGTERM, SIGINT, SIGHUP end it as the linger does, its file removed. */
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGHUP);
  sigprocmask(SIG_BLOCK, &stop, NULL);
  int sig = signalfd(-1, &stop, SFD_CLOEXEC);
  long until = native_now_ms() + linger_ms;
  for (;;) {
    long left = until - native_now_ms();
    if (left <= 0) break;
    struct pollfd p[3] = {{.fd = l, .events = POLLIN}, {.fd = agent, .events = POLLRDHUP}, {.fd = sig, .events = POLLIN}};
    if (poll(p, 3, (int)left) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (p[1].revents || p[2].revents) break; /* QEMU closed the connection (nothing left to lend), or a stop */
    if (!(p[0].revents & POLLIN)) continue;
    int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0) continue;
    struct ucred cred;
    socklen_t cl = sizeof cred;
    int gone = 0;
    if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0 && cred.uid == me && lend(c, agent)) {
      /* Its close, or its death, ends the loan; a byte first says the connection stopped
         answering it (or was left mid-reply): closed, not lent again. */
      struct pollfd q[3] = {{.fd = c, .events = POLLIN}, {.fd = agent, .events = POLLRDHUP}, {.fd = sig, .events = POLLIN}};
      while (poll(q, 3, -1) < 0 && errno == EINTR) {
      }
      char drop;
      gone = q[1].revents != 0 || q[2].revents != 0 || ((q[0].revents & POLLIN) && recv(c, &drop, 1, MSG_DONTWAIT) == 1);
    }
    close(c);
    if (gone) break;
    until = native_now_ms() + linger_ms;
  }
  /* Our socket file only (another holder's after ours was found dead stays); unlinked before
     the listening socket closes, so no one takes ours for a dead one and replaces it meanwhile. */
  struct stat st;
  if (stat(hold, &st) == 0 && st.st_dev == dev && st.st_ino == ino) unlink(hold);
  close(l);
  close(agent);
}

/* A listening socket bound at hold, 0600, and the file's identity in st; or -errno, with no file left. */
static int listen_at(const char *hold, struct sockaddr_un *a, struct stat *st) {
  int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (l < 0) return -errno;
  if (bind(l, (struct sockaddr *)a, sizeof *a) < 0) return dropped(l, NULL, errno);
  if (chmod(hold, 0600) < 0 || listen(l, 16) < 0 || stat(hold, st) < 0) return dropped(l, hold, errno);
  return l;
}

napi_value AgentHold(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  char hold[SUN_PATH_BUF];
  int32_t fd, linger_ms;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      !get_path(env, argv[1], hold, sizeof hold) || napi_get_value_int32(env, argv[2], &linger_ms) != napi_ok || fd < 0 || linger_ms <= 0) {
    napi_throw_type_error(env, NULL, "agentHold(fd, holdPath, lingerMs)");
    return NULL;
  }
  struct sockaddr_un a;
  int e = addr_of(hold, &a);
  if (e) return native_int(env, e);
  struct stat st;
  int l = listen_at(hold, &a, &st);
  if (l == -EADDRINUSE) {
    /* A holder that died left its file: refused means no one listens there. A live one keeps it. */
    int probe = connect_to(hold, 100);
    if (probe >= 0) close(probe);
    if (probe != -ECONNREFUSED) return native_int(env, EADDRINUSE);
    unlink(hold);
    l = listen_at(hold, &a, &st);
  }
  if (l < 0) return native_int(env, -l);
  pid_t child = native_fork_detached(fd, l);
  if (child < 0) return native_int(env, -dropped(l, hold, errno));
  if (child == 0) {
    /* Its own session: a terminal's or a runtime's signal to the caller's group is not for it. */
    setsid();
    holder(fd, l, linger_ms, hold, st.st_dev, st.st_ino);
    _exit(0);
  }
  close(l);
  return native_int(env, 0);
}
