#!/bin/sh
# cdrstats-collector: before removing files (deb prerm: remove|upgrade|...).
set -e
[ "$1" = remove ] || exit 0
if [ -d /run/systemd/system ]; then
    systemctl stop cdrstats-collector.service >/dev/null 2>&1 || true
fi
systemctl disable cdrstats-collector.service >/dev/null 2>&1 || true
find /opt/cdrstats-collector -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
exit 0
