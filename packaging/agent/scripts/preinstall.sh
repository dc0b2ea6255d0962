#!/bin/sh
# cdrstats-agent: before unpacking (deb preinst: install|upgrade; rpm %pre: 1|2).
# Creates the system user and group first, so that the files owned by them unpack right.
set -e
if ! getent group cdrstats-agent >/dev/null; then
    groupadd --system cdrstats-agent
fi
if ! getent passwd cdrstats-agent >/dev/null; then
    useradd --system --gid cdrstats-agent --home-dir /var/lib/cdrstats-agent --no-create-home \
        --shell /usr/sbin/nologin --comment "CDR-Stats agent" cdrstats-agent
fi
exit 0
