#!/bin/sh
# cdrstats-agent: before removing files (deb prerm: remove|upgrade|deconfigure|failed-upgrade;
# rpm %preun: 0 when erasing, 1 when upgrading).
set -e
case "$1" in
    remove|0) ;;
    *) exit 0 ;;  # an upgrade: the new postinst restarts the service
esac
if [ -d /run/systemd/system ]; then
    systemctl stop cdrstats-agent.service >/dev/null 2>&1 || true
fi
systemctl disable cdrstats-agent.service >/dev/null 2>&1 || true
# Byte-compiled files made by postinst are not in the package: remove them with it.
find /opt/cdrstats-agent -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
exit 0
