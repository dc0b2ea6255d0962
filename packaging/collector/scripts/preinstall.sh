#!/bin/sh
# cdrstats-collector: before unpacking (deb preinst: install|upgrade).
set -e
if ! getent group cdrstats >/dev/null; then
    groupadd --system cdrstats
fi
if ! getent passwd cdrstats >/dev/null; then
    useradd --system --gid cdrstats --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin --comment "CDR-Stats collector" cdrstats
fi
exit 0
