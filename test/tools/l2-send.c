/*
 * The attacker's sender of test/security.test.ts, built static to run inside
 * a busybox container:
 *   l2-send ra IFACE PREFIX   one IPv6 router advertisement on IFACE, from its
 *                             MAC's link-local address to all nodes, offering
 *                             PREFIX/64 for autoconf and a default route
 *   l2-send ether IFACE TYPE  one broadcast frame of ethertype TYPE (hex)
 */
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

static uint16_t checksum(const uint8_t *src, const uint8_t *dst, const uint8_t *icmp, size_t len) {
  uint32_t sum = 0;
  uint8_t pseudo[40] = {0};
  memcpy(pseudo, src, 16);
  memcpy(pseudo + 16, dst, 16);
  pseudo[34] = (uint8_t)(len >> 8);
  pseudo[35] = (uint8_t)len;
  pseudo[39] = 58;
  for (size_t i = 0; i < 40; i += 2) sum += (uint32_t)(pseudo[i] << 8 | pseudo[i + 1]);
  for (size_t i = 0; i < len; i += 2) sum += (uint32_t)(icmp[i] << 8 | (i + 1 < len ? icmp[i + 1] : 0));
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return (uint16_t)~sum;
}

static int send_frame(int fd, const char *iface, const uint8_t *f, size_t len) {
  struct sockaddr_ll to = {0};
  to.sll_family = AF_PACKET;
  to.sll_ifindex = (int)if_nametoindex(iface);
  to.sll_halen = 6;
  memcpy(to.sll_addr, f, 6);
  if (sendto(fd, f, len, 0, (struct sockaddr *)&to, sizeof to) != (ssize_t)len) {
    perror("l2-send: sendto");
    return 1;
  }
  close(fd);
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 4 || (strcmp(argv[1], "ra") != 0 && strcmp(argv[1], "ether") != 0)) {
    fprintf(stderr, "usage: l2-send ra IFACE PREFIX | l2-send ether IFACE TYPE\n");
    return 2;
  }
  const char *iface = argv[2];
  int fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
  if (fd < 0) {
    perror("l2-send: socket");
    return 1;
  }
  struct ifreq ifr = {0};
  strncpy(ifr.ifr_name, iface, IFNAMSIZ - 1);
  if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) {
    perror("l2-send: SIOCGIFHWADDR");
    return 1;
  }
  uint8_t mac[6];
  memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);

  if (strcmp(argv[1], "ether") == 0) {
    unsigned long type = strtoul(argv[3], NULL, 16);
    uint8_t e[60] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    memcpy(e + 6, mac, 6);
    e[12] = (uint8_t)(type >> 8), e[13] = (uint8_t)type;
    return send_frame(fd, iface, e, sizeof e);
  }

  uint8_t prefix[16];
  if (inet_pton(AF_INET6, argv[3], prefix) != 1) {
    fprintf(stderr, "l2-send: bad prefix %s\n", argv[3]);
    return 2;
  }

  uint8_t f[14 + 40 + 16 + 8 + 32] = {0};
  uint8_t *eth = f, *ip = f + 14, *ra = f + 54;
  const uint8_t allnodes_mac[6] = {0x33, 0x33, 0, 0, 0, 1};
  memcpy(eth, allnodes_mac, 6);
  memcpy(eth + 6, mac, 6);
  eth[12] = 0x86, eth[13] = 0xdd;

  size_t icmp_len = 16 + 8 + 32;
  ip[0] = 0x60;
  ip[4] = (uint8_t)(icmp_len >> 8), ip[5] = (uint8_t)icmp_len;
  ip[6] = 58, ip[7] = 255;
  uint8_t *src = ip + 8, *dst = ip + 24;
  src[0] = 0xfe, src[1] = 0x80; /* fe80::EUI-64 of the MAC */
  src[8] = mac[0] ^ 2, src[9] = mac[1], src[10] = mac[2], src[11] = 0xff, src[12] = 0xfe;
  src[13] = mac[3], src[14] = mac[4], src[15] = mac[5];
  dst[0] = 0xff, dst[1] = 0x02, dst[15] = 1;

  ra[0] = 134;                 /* router advertisement */
  ra[4] = 64;                  /* cur hop limit */
  ra[6] = 0x07, ra[7] = 0x08;  /* router lifetime 1800 s */
  uint8_t *o = ra + 16;
  o[0] = 1, o[1] = 1;          /* source link-layer address */
  memcpy(o + 2, mac, 6);
  o += 8;
  o[0] = 3, o[1] = 4, o[2] = 64, o[3] = 0xc0; /* prefix information: on-link, autoconf */
  o[4] = 0, o[5] = 1, o[6] = 0x51, o[7] = 0x80;  /* valid 86400 s */
  o[8] = 0, o[9] = 0, o[10] = 0x38, o[11] = 0x40; /* preferred 14400 s */
  memcpy(o + 16, prefix, 16);
  uint16_t c = checksum(src, dst, ra, icmp_len);
  ra[2] = (uint8_t)(c >> 8), ra[3] = (uint8_t)c;

  return send_frame(fd, iface, f, sizeof f);
}
