#!/usr/bin/env bash
# Installs what Flotilla's development and tests need on Debian/Ubuntu:
# PostgreSQL server binaries, runc, busybox-static, QEMU, iproute2/iptables,
# and the triton CLI. Safe to run again: it only installs what is missing.
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
echo "setup: done"
