#!/usr/bin/env bash
# Installs what Flotilla's development and tests need on Debian/Ubuntu:
# PostgreSQL server binaries, runc, busybox-static, QEMU, iproute2/iptables,
# sshfs (nodes mount each other's volumes), the triton CLI and docker compose (built from source as a docker CLI
# plugin). Safe to run again: it only installs what is missing.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
have runc || need+=(runc)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
have qemu-system-x86_64 || need+=(qemu-system-x86)
have qemu-img || need+=(qemu-utils)
have ip || need+=(iproute2)
have iptables || need+=(iptables)
have ssh-keygen || need+=(openssh-client)
have npm || need+=(npm)
have sshfs || need+=(sshfs)
have mkfs.ext4 || need+=(e2fsprogs)

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# The VM tests fetch the distribution's kernel package with apt-get download,
# which needs package lists even when nothing else is missing.
if [ ${#need[@]} -gt 0 ] || ! ls /var/lib/apt/lists/*Packages* >/dev/null 2>&1; then
  $SUDO apt-get update -qq
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The triton CLI the end-to-end tests drive.
if ! have triton || [ "$(triton --version 2>/dev/null | head -1)" != "Triton CLI 7.17.0" ]; then
  echo "setup: installing triton@7.17.0 with npm"
  $SUDO npm install -g --no-audit --no-fund triton@7.17.0 >/dev/null 2>&1 || $SUDO npm install -g triton@7.17.0
fi

# docker compose, the CLI plugin the compose end-to-end test drives: built
# from its Go module (go install refuses modules with exclude directives,
# so it is built inside the downloaded module) into the system-wide plugin
# folder every user's docker CLI looks in.
COMPOSE_VERSION=v5.6.0
COMPOSE_PLUGIN=/usr/local/lib/docker/cli-plugins/docker-compose
if [ "$("$COMPOSE_PLUGIN" version --short 2>/dev/null)" != "${COMPOSE_VERSION#v}" ]; then
  have go || { echo "setup: go is needed to build docker compose $COMPOSE_VERSION" >&2; exit 1; }
  echo "setup: building docker compose $COMPOSE_VERSION (a few minutes the first time)"
  tmp=$(mktemp -d)
  moddir=$(cd "$tmp" && go mod download -json "github.com/docker/compose/v5@$COMPOSE_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -d "$moddir" ] || { echo "setup: could not download github.com/docker/compose/v5@$COMPOSE_VERSION" >&2; exit 1; }
  $SUDO mkdir -p "$(dirname "$COMPOSE_PLUGIN")"
  (cd "$moddir" && GOFLAGS="-buildvcs=false -mod=readonly" go build -trimpath \
    -ldflags "-s -w -X github.com/docker/compose/v5/internal.Version=$COMPOSE_VERSION" -o "$tmp/docker-compose" ./cmd)
  $SUDO install -m 0755 "$tmp/docker-compose" "$COMPOSE_PLUGIN"
  rm -rf "$tmp"
fi
echo "setup: done"
