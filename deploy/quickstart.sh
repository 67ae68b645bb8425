#!/usr/bin/env bash
# Quickstart: install what is missing, build, and start a one-machine cloud.
# Usage: deploy/quickstart.sh [DRIVER] (auto by default: runc as root, else sim; or sim, runc, qemu, runc,qemu)
set -euo pipefail
cd "$(dirname "$0")/.."
driver="${1:-auto}"
if [ ! -f "$HOME/.ssh/id_ed25519.pub" ] && [ ! -f "$HOME/.ssh/id_rsa.pub" ]; then
  echo "quickstart: no SSH key found; creating ~/.ssh/id_ed25519"
  mkdir -p "$HOME/.ssh" && ssh-keygen -q -t ed25519 -N '' -f "$HOME/.ssh/id_ed25519"
fi
make setup build
echo "quickstart: starting Flotilla (driver $driver); in another shell: . flotilla-data/env.sh && triton info"
exec ./bin/flotilla dev --data flotilla-data --driver "$driver" --docker-addr 127.0.0.1:2376
