#!/bin/sh
# cdrstats-collector: after removing files (deb postrm: remove|purge|upgrade|...).
# The data is in PostgreSQL: neither remove nor purge touches it.
set -e
case "$1" in
    remove|purge)
        if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
        ;;
esac
if [ "$1" = purge ]; then
    rmdir /etc/cdrstats 2>/dev/null || true
    rmdir /opt/cdrstats-collector 2>/dev/null || true
    if getent passwd cdrstats >/dev/null; then userdel cdrstats || true; fi
    if getent group cdrstats >/dev/null; then groupdel cdrstats || true; fi
fi
exit 0
