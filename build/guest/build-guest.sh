#!/usr/bin/env bash
# Build the small QEMU test guest once: a Debian cloud kernel plus a
# busybox-static initramfs that loads virtio/conntrack/IPVS modules and runs
# qemu-ga on its virtio-serial port, with the host's ip, ipvsadm, conntrack.
# Output: $OUT/vmlinuz, $OUT/initramfs.cpio.gz (OUT defaults to .cache/guest).
# Works on a fresh Debian 12 machine (installs what it needs with apt-get).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${OCINET_GUEST_DIR:-$ROOT/.cache/guest}
HOST_PKGS=(qemu-system-x86 qemu-guest-agent ipvsadm conntrack busybox-static cpio kmod iproute2)
BINS=(/usr/sbin/qemu-ga /usr/sbin/ipvsadm /usr/sbin/conntrack /usr/sbin/ip)
# Modules the guest loads; dependencies are added by modinfo below.
MODS=(virtio_pci virtio_net virtio_console nfnetlink nf_conntrack nf_conntrack_netlink
  ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_lblc ip_vs_lblcr ip_vs_dh ip_vs_sh
  ip_vs_sed ip_vs_nq ip_vs_fo ip_vs_ovf ip_vs_mh)

log() { echo "build-guest: $*" >&2; }

# --- host packages (apt-get update only when something is missing) ---
missing=()
for p in "${HOST_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- cache check: this script plus the versions of everything copied in ---
stamp=$( {
  sha256sum < "${BASH_SOURCE[0]}"
  dpkg-query -W "${HOST_PKGS[@]}"
  for b in "${BINS[@]}"; do ldd "$b"; done | awk '$3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u | xargs sha256sum
} | sha256sum | cut -d' ' -f1)
if [[ -f $OUT/.done && $(cat "$OUT/.done") == "$stamp" && -f $OUT/vmlinuz && -f $OUT/initramfs.cpio.gz ]]; then
  log "cached in $OUT"
  exit 0
fi

start=$(date +%s)
mkdir -p "$OUT"
rm -f "$OUT/.done"
WORK=$(mktemp -d "$OUT/work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --- kernel: unpack the cloud kernel .deb into the cache, not onto the host ---
kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}' || true)
if [[ -z $kpkg ]]; then
  apt-get update -qq
  kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
fi
deb=$(ls "$OUT"/"$kpkg"_*.deb 2>/dev/null | head -1 || true)
if [[ -z $deb ]]; then
  log "downloading $kpkg"
  rm -f "$OUT"/linux-image-*.deb
  # apt-get download writes to the cwd; _apt cannot write there, hence the warning.
  (cd "$OUT" && apt-get download -qq "$kpkg" 2>&1 | grep -v 'unsandboxed' >&2 || true)
  deb=$(ls "$OUT"/"$kpkg"_*.deb 2>/dev/null | head -1 || true)
  [[ -n $deb ]] || { log "could not download $kpkg"; exit 1; }
fi
dpkg-deb -x "$deb" "$WORK/k"
kver=$(ls "$WORK/k/lib/modules" | head -1)
KMOD=$WORK/k/lib/modules/$kver
cp "$WORK/k/boot/vmlinuz-$kver" "$WORK/vmlinuz"

# --- modules: resolve dependencies and order them (deepest first) ---
declare -A path_of=() seen=()
while IFS= read -r f; do
  n=$(basename "$f"); n=${n%%.ko*}; path_of[${n//-/_}]=$f
done < <(find "$KMOD/kernel" -name '*.ko*')
order=()
visit() {
  local m=${1//-/_} d
  [[ -n ${seen[$m]:-} ]] && return
  seen[$m]=1
  [[ -n ${path_of[$m]:-} ]] || { log "module $m not in $kver (built in?)"; return; }
  for d in $(modinfo -F depends "${path_of[$m]}" | tr ',' ' '); do visit "$d"; done
  order+=("$m")
}
for m in "${MODS[@]}"; do visit "$m"; done

R=$WORK/root
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,run,tmp,etc,lib/modules,lib64,var/run}
: > "$R/lib/modules/order"
for m in "${order[@]}"; do
  f=${path_of[$m]}
  # Decompress always: busybox insmod hands raw bytes to the kernel, which
  # only takes compressed modules with CONFIG_MODULE_DECOMPRESS.
  case $f in
    *.ko.xz) xz -dc "$f" > "$R/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -qdc "$f" > "$R/lib/modules/$m.ko" ;;
    *.ko.gz) gzip -dc "$f" > "$R/lib/modules/$m.ko" ;;
    *) cp "$f" "$R/lib/modules/$m.ko" ;;
  esac
  echo "$m" >> "$R/lib/modules/order"
done

# --- userland: busybox applets, then the real tools over them ---
cp /bin/busybox "$R/bin/busybox"
for a in $("$R/bin/busybox" --list); do
  [[ $a == busybox ]] || ln -sf busybox "$R/bin/$a"
done
for b in "${BINS[@]}"; do
  rm -f "$R/bin/$(basename "$b")"
  cp "$b" "$R$b"
  for lib in $(ldd "$b" | awk '$3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
    mkdir -p "$R$(dirname "$lib")"
    cp -L "$lib" "$R$lib"
  done
done
echo 'root:x:0:0:root:/:/bin/sh' > "$R/etc/passwd"
echo 'root:x:0:' > "$R/etc/group"

cat > "$R/init" <<'EOF'
#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
while read -r m; do
  insmod "/lib/modules/$m.ko" || echo "ocinet-guest: insmod $m failed"
done < /lib/modules/order
ip link set lo up
# The agent's port: found by name, since there is no udev to make symlinks. A guest
# booted with the agent on a virtconsole (boot-guest.sh OCINET_GUEST_AGENT_PORT=console)
# has it as /dev/hvc0, a tty: qemu-ga's isa-serial method.
port=
for i in $(seq 1 100); do
  [ -e /dev/hvc0 ] && port=/dev/hvc0 && break
  for n in /sys/class/virtio-ports/*/name; do
    [ -f "$n" ] && [ "$(cat "$n")" = org.qemu.guest_agent.0 ] && port=/dev/$(basename "$(dirname "$n")")
  done
  [ -n "$port" ] && [ -e "$port" ] && break
  sleep 0.1
done
echo "ocinet-guest: ready, agent on ${port:-none}"
# init must never exit (kernel panic): keep the agent running.
while true; do
  if [ "$port" = /dev/hvc0 ]; then method=isa-serial; else method=virtio-serial; fi
  qemu-ga -m $method -p "${port:-/dev/vport0p1}" -t /run -f /run/qemu-ga.pid
  echo "ocinet-guest: qemu-ga exited $?, restarting"
  sleep 1
done
EOF
chmod +x "$R/init"

(cd "$R" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -6 > "$WORK/initramfs.cpio.gz")
mv "$WORK/vmlinuz" "$OUT/vmlinuz"
mv "$WORK/initramfs.cpio.gz" "$OUT/initramfs.cpio.gz"
echo "$kver" > "$OUT/kernel-version"
echo "$stamp" > "$OUT/.done"
log "built $OUT (kernel $kver, ${#order[@]} modules) in $(($(date +%s) - start)) s"
