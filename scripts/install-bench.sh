#!/usr/bin/env bash
# Debian packages only the benchmarks need (run by `make bench`, not by `make install` / `make test`):
# the peer family's own Docker daemon (docker.io) and the offline image build (debootstrap).
# Idempotent: installs only what is missing, quiet when done. Never starts a service: the bench runs its
# own private dockerd and stops it at the end.
set -euo pipefail
need=()
[ -x /usr/sbin/dockerd ] || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
# Docker's overlay2 driver needs the kernel's overlay filesystem; without it the bench falls back to fuse-overlayfs.
grep -qw overlay /proc/filesystems 2>/dev/null || command -v fuse-overlayfs >/dev/null 2>&1 || need+=(fuse-overlayfs)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "the benchmarks need these Debian packages (run as root to install them): ${need[*]}" >&2
  exit 1
fi
echo "installing Debian packages for the benchmarks: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
# docker.io's postinst would start the system's Docker service (default bridge, iptables rules): a
# policy-rc.d that refuses every start keeps it stopped; one already in place is left as it is.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod 755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi
apt-get update -qq -o DPkg::Lock::Timeout=900
apt-get install -y -qq -o DPkg::Lock::Timeout=900 --no-install-recommends "${need[@]}" >/dev/null
