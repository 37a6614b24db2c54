#!/usr/bin/env bash
# Installs the Debian packages agbox needs, only those missing (idempotent, quiet when done).
set -euo pipefail
need=()
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
# Sandbox networks: libnftables (in-process) and the nft command (operators, tests); curl for sessions.
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
[ -x /usr/sbin/mkfs.ext4 ] || [ -x /sbin/mkfs.ext4 ] || need+=(e2fsprogs)
[ -x /usr/bin/python3 ] || need+=(python3)
command -v node >/dev/null 2>&1 || need+=(nodejs)
[ -f /usr/lib/python3/dist-packages/matplotlib/__init__.py ] || need+=(python3-matplotlib python3-numpy python3-pandas)
# run_code's Python is an IPython shell run by the sandbox's /usr/bin/python3 (figures via matplotlib-inline).
[ -f /usr/lib/python3/dist-packages/IPython/__init__.py ] || need+=(python3-ipython)
[ -f /usr/lib/python3/dist-packages/matplotlib_inline/__init__.py ] || need+=(python3-matplotlib-inline)
command -v java >/dev/null 2>&1 || need+=(default-jdk-headless)
command -v Rscript >/dev/null 2>&1 || need+=(r-base-core)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# The web console is tested in Firefox too (driven over Marionette, tests/firefox.py).
command -v firefox-esr >/dev/null 2>&1 || need+=(firefox-esr)
# PostgreSQL server binaries: the test suite runs the store against a throwaway cluster (initdb + pg_ctl).
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
# The computer-use desktop: X server, window manager, input/window tools, VNC + noVNC for the live view,
# a JPEG encoder, fonts, and the desktop apps (terminal, editor, file manager; Tk for the test probe).
for pkg in xvfb:Xvfb openbox:openbox xdotool:xdotool wmctrl:wmctrl xterm:xterm l3afpad:l3afpad pcmanfm:pcmanfm \
           x11vnc:x11vnc libjpeg-turbo-progs:cjpeg; do
  command -v "${pkg#*:}" >/dev/null 2>&1 || need+=("${pkg%%:*}")
done
[ -f /usr/share/novnc/core/rfb.js ] || need+=(novnc)
[ -d /usr/share/fonts/X11/misc ] || need+=(xfonts-base)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
[ -f /usr/lib/python3.11/tkinter/__init__.py ] || need+=(python3-tk)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "agbox needs these Debian packages (run as root to install them): ${need[*]}" >&2
  exit 1
fi
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
