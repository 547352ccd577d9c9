# ocinet — see README.md. `make demo` and `make test` set the machine up first.
PREFIX ?= /usr/local
LIBDIR := $(PREFIX)/lib/ocinet
NODE ?= $(shell command -v node)
APT_PACKAGES := runc iproute2 iptables busybox-static conntrack util-linux jq hyperfine \
	containernetworking-plugins qemu-system-x86 qemu-guest-agent ipvsadm cpio kmod podman gcc libc6-dev nftables \
	containerd netavark
SETUP_STAMP := .cache/setup.stamp
SOURCES := $(shell find core hooks build -name '*.ts' -o -name '*.cts' -o -name '*.mjs' -o -name '*.cjs' -o -name '*.json' -o -name '*.c' | grep -v generated)

.PHONY: all setup build test demo bench install uninstall clean typecheck guest
# A build that fails midway (say, at the code caches) leaves no dist/bin/ocinet-hook that looks up to date.
.DELETE_ON_ERROR:

all: build

# Debian packages (only when one is missing) and npm packages from package-lock.
$(SETUP_STAMP): package-lock.json
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	npm ci --no-audit --no-fund
	@mkdir -p .cache && touch $@

setup: $(SETUP_STAMP)

dist/bin/ocinet-hook: $(SETUP_STAMP) $(SOURCES) package.json
	$(NODE) build/build.mjs

build: dist/bin/ocinet-hook

typecheck: $(SETUP_STAMP)
	npx tsc -p .

# The VM tests' guest (cached in .cache/guest). Built here, outside the tests'
# network namespaces, because it downloads the kernel package with apt.
guest: $(SETUP_STAMP)
	bash build/guest/build-guest.sh

test: build typecheck guest
	$(NODE) test/run.mjs

demo: build
	examples/two-containers/demo.sh

bench: build
	bench/run.sh

# The commands build/build.mjs makes (its `entries`): each is dist/bin/NAME (the loader that runs),
# NAME.js (the bundle) and NAME.cache (its V8 code cache, root's alone once installed).
COMMANDS := ocinet-hook ocinet ocinet-cni

install: build
	install -d $(LIBDIR)/bin $(PREFIX)/bin
	install -m 0755 $(addprefix dist/bin/,$(COMMANDS)) $(LIBDIR)/bin/
	install -m 0644 $(foreach c,$(COMMANDS),dist/bin/$(c).js dist/bin/$(c).cache) dist/bin/netlink.js dist/bin/netlink.node dist/bin/native.node $(LIBDIR)/bin/
	install -m 0644 dist/package.json $(LIBDIR)/package.json
	ln -sf ../lib/ocinet/bin/ocinet-hook $(PREFIX)/bin/ocinet-hook
	ln -sf ../lib/ocinet/bin/ocinet $(PREFIX)/bin/ocinet
	install -d $(PREFIX)/lib/cni
	ln -sf ../ocinet/bin/ocinet-cni $(PREFIX)/lib/cni/ocinet

uninstall:
	rm -f $(PREFIX)/bin/ocinet-hook $(PREFIX)/bin/ocinet $(PREFIX)/lib/cni/ocinet
	rm -rf $(LIBDIR)

clean:
	rm -rf dist core/generated
