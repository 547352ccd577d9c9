#!/bin/bash
# make-bundle.sh DIR HOOK [HOOK-ARG...]
# Makes a runc bundle in DIR: a busybox-static rootfs and a config.json whose
# prestart and poststop hooks run HOOK with "env": [] (runc then gives the hook
# no PATH at all), CAP_NET_RAW for ping, and a web server on port 80 as the
# container's process. Set OCINET_ANNOTATIONS to a JSON object to add
# annotations, OCINET_NETNS_PATH to join an existing network namespace,
# OCINET_SETUP_STAGE=createRuntime to set up there instead of in prestart.
set -euo pipefail
dir=$1 hook=$2
shift 2
busybox=$(command -v busybox)
mkdir -p "$dir/rootfs"/{bin,proc,sys,dev,tmp,www,etc}
cp "$busybox" "$dir/rootfs/bin/busybox"
for applet in sh ls cat echo sleep ping wget nc httpd ip ifconfig route hostname; do
  ln -sf busybox "$dir/rootfs/bin/$applet"
done
echo "hello from $(basename "$dir")" > "$dir/rootfs/www/index.html"
cd "$dir"
rm -f config.json
runc spec
args_json=$(jq -cn --arg p "$hook" '$ARGS.positional | [$p | split("/") | last] + .' --args -- "$@")
jq --arg hook "$hook" --argjson args "$args_json" \
   --argjson ann "${OCINET_ANNOTATIONS:-{\}}" --arg nspath "${OCINET_NETNS_PATH:-}" \
   --arg stage "${OCINET_SETUP_STAGE:-prestart}" '
  .process.terminal = false
  | .process.args = ["httpd", "-f", "-p", "80", "-h", "/www"]
  | .process.capabilities |= with_entries(.value += ["CAP_NET_RAW", "CAP_NET_BIND_SERVICE"] | .value |= unique)
  | .root.readonly = true
  | .annotations = $ann
  | .linux.namespaces |= map(if .type == "network" and $nspath != "" then .path = $nspath else . end)
  | .hooks = {
      ($stage): [{ path: $hook, args: $args, env: [] }],
      poststop: [{ path: $hook, args: $args, env: [] }]
    }
' config.json > config.json.new
mv config.json.new config.json
