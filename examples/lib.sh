# shellcheck shell=bash
# Shared parts of the demos in examples/*/demo.sh; each demo sources this file
# with `source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"` and then calls:
#   demo_enter_namespace [TOOL...]  checks, then re-runs the demo in its own
#                                   network + mount namespace
#   demo_setup                      work dir, state dir, runc root, cleanup trap
# and uses the helpers below (step, show, ok, die, runc, ocinet, start, stop,
# fetch, make_bundle, listed, nothing_left, hook_log, demo_passed).

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOOK=$top/dist/bin/ocinet-hook
CLI=$top/dist/bin/ocinet
MAKE_BUNDLE=$top/examples/make-bundle.sh
# The demo that sources us, and its arguments, for the re-exec below.
demo_script=$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)/$(basename "${BASH_SOURCE[1]}")
demo_args=("$@")

# demo_enter_namespace [TOOL...]: outside the demo's namespace, check for root,
# the build and the tools every demo needs plus TOOL..., then re-execute the
# demo inside `unshare --net --mount`; inside, just return.
# The marker holds our pid (unchanged across the execs below) and the namespace
# we started in: only this very process, in a namespace other than that one,
# counts as inside. An inherited or hand-set marker never matches.
demo_enter_namespace() {
  if [[ ${OCINET_DEMO_NS:-} != "$$ "* || $(readlink /proc/self/ns/net) == "${OCINET_DEMO_NS#* }" ]]; then
    fail() { echo "demo: $*" >&2; exit 1; }
    [[ $(id -u) == 0 ]] || fail "run as root (runc and the hook need it)"
    [[ -x $HOOK && -x $CLI ]] || fail "$HOOK is missing: run 'make build' first"
    local p
    for p in runc busybox jq ip iptables-save unshare timeout "$@"; do
      command -v "$p" >/dev/null || fail "'$p' not found: run 'make setup' first"
    done
    OCINET_DEMO_NS="$$ $(readlink /proc/self/ns/net)"
    export OCINET_DEMO_NS
    exec unshare --net --mount --propagation private -- "$BASH" "$demo_script" "${demo_args[@]}"
  fi
  unset OCINET_DEMO_NS
}

# demo_setup: inside the namespace, bring lo up and make the work dir with the
# demo's state dir and runc root; install the cleanup trap. Sets t0, work,
# STATE, RUNC_ROOT, started (container ids), bg_pids (background processes the
# demo starts) and current (the step shown if the demo fails).
demo_setup() {
  t0=$(date +%s%N)
  ip link set lo up
  work=$(mktemp -d /tmp/ocinet-demo.XXXXXX)
  STATE=$work/state
  RUNC_ROOT=$work/runc
  started=() bg_pids=()
  current="setup"
  discarded="namespace discarded" # what the failure message says went away
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
}

# cleanup (EXIT trap): force-delete the containers (last started first: a
# container may live in an earlier one's namespace), stop bg_pids (last first),
# remove the work dir, and on failure say at which step.
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM HUP
  local i
  for ((i = ${#started[@]} - 1; i >= 0; i--)); do
    runc state "${started[i]}" >/dev/null 2>&1 && runc delete --force "${started[i]}" >/dev/null 2>&1
  done
  for ((i = ${#bg_pids[@]} - 1; i >= 0; i--)); do
    kill "${bg_pids[i]}" 2>/dev/null && wait "${bg_pids[i]}" 2>/dev/null
  done
  rm -rf "$work"
  if [[ $rc != 0 ]]; then
    printf '\n%sdemo FAILED%s at step "%s" (exit %s); containers deleted, %s\n' "$red" "$off" "$current" "$rc" "$discarded" >&2
  fi
  exit "$rc"
}

# Output: a numbered step heading, a command echoed then run, a passed check,
# a failed one (exits).
if [[ -t 1 ]]; then bold=$'\e[1m' red=$'\e[31m' green=$'\e[32m' off=$'\e[0m'; else bold='' red='' green='' off=''; fi
n=0
step() { n=$((n + 1)); current="$n. $*"; printf '\n%s== %s ==%s\n' "$bold" "$current" "$off"; }
show() { printf '$ %s\n' "$*"; "$@"; }
ok() { printf '%sok%s: %s\n' "$green" "$off" "$*"; }
die() { printf '%sFAILED%s: %s\n' "$red" "$off" "$*" >&2; exit 1; }

# In the demos, `runc` and `ocinet` mean the demo's own runc root and state dir.
runc() { command runc --root "$RUNC_ROOT" "$@"; }
ocinet() { "$CLI" "$@" --state-dir "$STATE"; }

# listed ID [FIELD]: FIELD (default ip) of container ID in `ocinet list --json`.
listed() { ocinet list --json | jq -r --arg id "$1" --arg f "${2:-ip}" '.[] | select(.id == $id) | .[$f] // ""'; }

# make_bundle NAME [HOOK-ARG...]: examples/make-bundle.sh $work/NAME with the
# built hook and the demo's state dir, echoed first (with OCINET_ANNOTATIONS /
# OCINET_NETNS_PATH when the caller sets them, e.g. `X=... make_bundle web`).
make_bundle() {
  local name=$1 env=''
  shift
  [[ -z ${OCINET_ANNOTATIONS:-} ]] || env+="OCINET_ANNOTATIONS='$OCINET_ANNOTATIONS' "
  [[ -z ${OCINET_NETNS_PATH:-} ]] || env+="OCINET_NETNS_PATH=$OCINET_NETNS_PATH "
  printf '$ %s%s\n' "$env" "examples/make-bundle.sh $work/$name dist/bin/ocinet-hook --state-dir $STATE${*:+ $*}"
  "$MAKE_BUNDLE" "$work/$name" "$HOOK" --state-dir "$STATE" "$@"
}

# start ID BUNDLE: runc run -d, with runc's (and the hook's) error shown on failure.
start() {
  started+=("$1")
  printf '$ runc run -d --bundle %s %s\n' "$2" "$1"
  runc run -d --bundle "$2" "$1" </dev/null >"$work/$1.out" 2>&1 || { cat "$work/$1.out" >&2; die "runc run $1"; }
}

# stop ID: kill, wait until stopped, delete (poststop runs the hook's teardown).
stop() {
  show runc kill "$1" KILL
  local i
  for i in $(seq 100); do
    [[ $(runc state "$1" | jq -r .status) == stopped ]] && break
    sleep 0.05
  done
  show runc delete "$1"
}

# fetch_with LABEL URL EXPECTED CMD...: GET URL with `CMD... wget`, echoed as
# `LABEL wget ...`, retrying while the server starts; prints the body and dies
# unless it is EXPECTED.
fetch_with() {
  local label=$1 url=$2 want=$3 got='' i
  shift 3
  printf '$ %s wget -qO- %s\n' "$label" "$url"
  for i in $(seq 20); do
    # (no wget -T: busybox 1.35's wget segfaults with it; timeout(1) instead)
    got=$(timeout 5 "$@" wget -qO- "$url" 2>&1) && break
    sleep 0.1
  done
  printf '%s\n' "$got"
  [[ $got == "$want" ]] || die "expected '$want' from $url"
}

# fetch URL EXPECTED [ID]: fetch_with busybox from the demo's namespace, or
# from inside container ID.
fetch() {
  if [[ -z ${3:-} ]]; then
    fetch_with busybox "$1" "$2" busybox
  else
    fetch_with "runc exec $3" "$1" "$2" runc --root "$RUNC_ROOT" exec "$3"
  fi
}

# ocinet_rules: what ocinet's firewall holds, on whichever backend: its
# iptables rules (nat table) and its nftables tables (auto picks nftables
# when nft is there).
ocinet_rules() {
  iptables-save -t nat | grep -E '^-A .*OCINET' | sed 's/^/  /' || true
  local family name
  while read -r _ family name; do
    [[ $name == ocinet-* ]] && nft list table "$family" "$name" | sed 's/^/  /'
  done < <(nft list tables 2>/dev/null || true)
  return 0
}

# rule_count: ocinet's iptables lines and nftables tables.
rule_count() {
  local ipt nft
  ipt=$(iptables-save | grep -c OCINET || true)
  nft=$(nft list tables 2>/dev/null | grep -c ' ocinet-' || true)
  echo $((ipt + nft))
}

# nothing_left [KEEP [BESIDES]]: show the links, the OCINET rule count and
# `ocinet list`; die if a link other than lo (or KEEP, an ERE for the name in
# `ip -o link`; BESIDES names them in the message), an OCINET rule, a listed
# container or a state.json record is left.
nothing_left() {
  local keep=${1:-lo} besides=${2:-lo} links rules left leases
  show ip -o link
  links=$(ip -o link | grep -vcE ": ($keep):" || true)
  rules=$(rule_count)
  printf 'ocinet rules (iptables lines + nftables tables): %s\n' "$rules"
  show ocinet list
  left=$(ocinet list --json | jq length)
  leases=$(jq '(.containers | length) + (.networks | length)' "$STATE/state.json")
  [[ $links == 0 ]] || die "$links link(s) besides $besides are left"
  [[ $rules == 0 ]] || die "$rules ocinet iptables line(s) or nftables table(s) are left"
  [[ $left == 0 && $leases == 0 ]] || die "ocinet still records $left container(s) / $leases record(s)"
}

# hook_log HEADING [EXTRA]: print HEADING and one line per hook run from the
# state dir's ocinet.log (EXTRA: a jq string expression appended to each line);
# die if any run failed.
hook_log() {
  echo "$1"
  jq -r '"  \(.op)\t\(.id)\tok=\(.ok)\t\(.ms) ms" + '"${2:-\"\"}" "$STATE/ocinet.log"
  if grep -q '"ok":false' "$STATE/ocinet.log"; then die "a hook run failed (see above)"; fi
}

# demo_passed: the closing line, with the time since demo_setup.
demo_passed() { printf '\n%sdemo passed%s in %s ms\n' "$green" "$off" $((($(date +%s%N) - t0) / 1000000)); }
