/*
 * rtnetlink from the hook's own process: the requests `ip` would send,
 * without running it (two programs less on a container's start path).
 * Messages are built in TypeScript (core/net/rtnl.ts); this file only opens
 * sockets, sends, and reads the kernel's answers.
 *
 *   rtnlSocket(nsFd): a NETLINK_ROUTE socket in the network namespace open
 *     at nsFd (-1: the caller's). A netlink socket stays in the namespace it
 *     was made in, so the thread enters the namespace only to make it and
 *     returns at once; it never runs anything else there.
 *   rtnlTalk(fd, [msg...]): each message in turn with an acknowledgement;
 *     stops at the first the kernel refuses. Returns [{ error, replies }] for
 *     those sent: error 0 or the kernel's errno, replies the messages it
 *     answered with before the acknowledgement (a GETLINK's link).
 *   rtnlDetached(msg, ifname, timeoutMs): a link deletion sent by a detached
 *     process. The kernel unlists a link at once but frees it only after an
 *     RCU barrier (~20 ms here) that the sender waits for; the caller waits
 *     only until `ifname` is gone from the namespace. Returns 0, or the
 *     kernel's errno when it refused (ENODEV: it was gone), or ETIMEDOUT.
 */
#define _GNU_SOURCE
#include "native.h"
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>

#define MAX_MSG 8192
#define RECV_BUF 32768

static int rtnl_open(int nsfd) {
  int self = -1;
  if (nsfd >= 0) {
    self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (self < 0) return -errno;
    if (setns(nsfd, CLONE_NEWNET) < 0) {
      int e = errno;
      close(self);
      return -e;
    }
  }
  int s = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  int e = errno;
  if (self >= 0) {
    /* Never go on in the container's namespace. */
    if (setns(self, CLONE_NEWNET) < 0) abort();
    close(self);
  }
  if (s < 0) return -e;
  struct timeval tv = {5, 0}; /* the kernel answers at once; never hang a hook */
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return s;
}

static int get_int(napi_env env, napi_value v, int32_t *out) {
  return napi_get_value_int32(env, v, out) == napi_ok;
}

napi_value RtnlSocket(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t nsfd;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || !get_int(env, argv[0], &nsfd)) {
    napi_throw_type_error(env, NULL, "rtnlSocket(nsFd): nsFd must be a number");
    return NULL;
  }
  int s = rtnl_open(nsfd);
  if (s < 0) return native_fail(env, nsfd >= 0 ? "rtnetlink socket in the container's namespace" : "rtnetlink socket", -s);
  return native_int(env, s);
}

/* Copies a Buffer argument holding one netlink message; 0 when it is not one. */
static size_t get_msg(napi_env env, napi_value v, unsigned char *buf) {
  void *data;
  size_t len;
  if (napi_get_buffer_info(env, v, &data, &len) != napi_ok || len < sizeof(struct nlmsghdr) || len > MAX_MSG) return 0;
  memcpy(buf, data, len);
  struct nlmsghdr *h = (struct nlmsghdr *)buf;
  if (h->nlmsg_len != len) return 0;
  return len;
}

/* Sends one request and reads until its acknowledgement; replies go to `replies` (may be NULL). */
static int talk(napi_env env, int s, unsigned char *msg, size_t len, uint32_t seq, napi_value replies) {
  struct nlmsghdr *h = (struct nlmsghdr *)msg;
  h->nlmsg_seq = seq;
  h->nlmsg_pid = 0;
  h->nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
  struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
  ssize_t n;
  do n = sendto(s, msg, len, 0, (struct sockaddr *)&kernel, sizeof kernel);
  while (n < 0 && errno == EINTR);
  if (n < 0) return errno;
  static unsigned char buf[RECV_BUF];
  uint32_t count = 0;
  for (;;) {
    struct sockaddr_nl from;
    socklen_t from_len = sizeof from;
    do n = recvfrom(s, buf, sizeof buf, MSG_TRUNC, (struct sockaddr *)&from, &from_len);
    while (n < 0 && errno == EINTR);
    if (n < 0) return errno;
    if ((size_t)n > sizeof buf) return EMSGSIZE; /* an answer this big is none ocinet asks for */
    /* Only the kernel answers: a process in the container's namespace may send to this socket too. */
    if (from_len < sizeof from || from.nl_family != AF_NETLINK || from.nl_pid != 0) continue;
    for (struct nlmsghdr *r = (struct nlmsghdr *)buf; NLMSG_OK(r, (size_t)n); r = NLMSG_NEXT(r, n)) {
      if (r->nlmsg_seq != seq) continue;
      if (r->nlmsg_type == NLMSG_ERROR) {
        struct nlmsgerr *e = NLMSG_DATA(r);
        return e->error < 0 ? -e->error : 0;
      }
      if (r->nlmsg_type == NLMSG_DONE || !replies) continue;
      napi_value copy;
      void *dst;
      if (napi_create_buffer_copy(env, r->nlmsg_len, r, &dst, &copy) == napi_ok) napi_set_element(env, replies, count++, copy);
    }
  }
}

napi_value RtnlTalk(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t s;
  uint32_t count;
  bool is_array = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 || !get_int(env, argv[0], &s) ||
      napi_is_array(env, argv[1], &is_array) != napi_ok || !is_array || napi_get_array_length(env, argv[1], &count) != napi_ok) {
    napi_throw_type_error(env, NULL, "rtnlTalk(fd, messages): fd a number, messages an array of Buffers");
    return NULL;
  }
  static unsigned char msg[MAX_MSG];
  static uint32_t seq = 0;
  napi_value out;
  napi_create_array_with_length(env, count, &out);
  for (uint32_t i = 0; i < count; i++) {
    napi_value m;
    napi_get_element(env, argv[1], i, &m);
    size_t len = get_msg(env, m, msg);
    if (!len) {
      napi_throw_type_error(env, NULL, "rtnlTalk: a message is not one whole netlink message");
      return NULL;
    }
    napi_value result, replies;
    napi_create_object(env, &result);
    napi_create_array(env, &replies);
    int e = talk(env, s, msg, len, ++seq, replies);
    napi_set_named_property(env, result, "error", native_int(env, e));
    napi_set_named_property(env, result, "replies", replies);
    napi_set_element(env, out, i, result);
    if (e) break;
  }
  return out;
}

napi_value RtnlDetached(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  char name[IFNAMSIZ + 1];
  size_t name_len = 0;
  int32_t timeout_ms;
  static unsigned char msg[MAX_MSG];
  size_t len = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 || !(len = get_msg(env, argv[0], msg)) ||
      napi_get_value_string_utf8(env, argv[1], name, sizeof name, &name_len) != napi_ok || name_len == 0 || name_len >= IFNAMSIZ ||
      !get_int(env, argv[2], &timeout_ms)) {
    napi_throw_type_error(env, NULL, "rtnlDetached(message, ifname, timeoutMs)");
    return NULL;
  }
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) return native_fail(env, "pipe", errno);
  /* Made here: the child of a threaded process only makes system calls. */
  int s = rtnl_open(-1);
  if (s < 0) {
    close(p[0]);
    close(p[1]);
    return native_fail(env, "rtnetlink socket", -s);
  }
  struct nlmsghdr *h = (struct nlmsghdr *)msg;
  h->nlmsg_seq = 1;
  h->nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
  pid_t child = native_fork_detached(s, p[1]);
  if (child < 0) {
    int e = errno;
    close(s);
    close(p[0]);
    close(p[1]);
    return native_fail(env, "fork", e);
  }
  if (child == 0) {
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    int e = 0;
    if (sendto(s, msg, len, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) e = errno;
    static unsigned char buf[4096];
    while (!e) {
      ssize_t n = recv(s, buf, sizeof buf, 0);
      if (n < 0) {
        if (errno != EINTR) e = errno;
        continue;
      }
      struct nlmsghdr *r = (struct nlmsghdr *)buf;
      if (NLMSG_OK(r, (size_t)n) && r->nlmsg_type == NLMSG_ERROR) {
        struct nlmsgerr *er = NLMSG_DATA(r);
        e = er->error < 0 ? -er->error : 0;
        break;
      }
    }
    int32_t code = e;
    ssize_t w = write(p[1], &code, sizeof code);
    (void)w;
    _exit(0);
  }
  close(s);
  close(p[1]);
  long t0 = native_now_ms();
  int32_t result = ETIMEDOUT;
  for (;;) {
    /* A refusal comes at once on the pipe; success shows as the name gone. */
    struct pollfd pfd = {.fd = p[0], .events = POLLIN};
    struct timespec slice = {0, 250000};
    if (ppoll(&pfd, 1, &slice, NULL) > 0) {
      int32_t code;
      result = read(p[0], &code, sizeof code) == sizeof code ? code : EIO;
      break;
    }
    if (if_nametoindex(name) == 0 && errno == ENODEV) {
      result = 0;
      break;
    }
    if (native_now_ms() - t0 > timeout_ms) break;
  }
  close(p[0]);
  return native_int(env, result);
}
