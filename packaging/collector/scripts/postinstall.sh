#!/bin/sh
# cdrstats-collector: after unpacking (deb postinst: configure [OLD-VERSION]).
set -e
[ "$1" = configure ] || exit 0
fresh=no
[ -z "$2" ] && fresh=yes
if [ -f /etc/cdrstats/collector.toml ]; then
    chgrp cdrstats /etc/cdrstats/collector.toml
    chmod 0640 /etc/cdrstats/collector.toml
fi
for tree in /opt/cdrstats-collector/lib/python3.*; do
    py=/usr/bin/${tree##*/}
    if [ -x "$py" ]; then
        "$py" -m compileall -q -j 0 "$tree" >/dev/null 2>&1 || true
    fi
done
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    if [ "$fresh" = yes ]; then
        systemctl enable cdrstats-collector.service >/dev/null 2>&1 || true
    else
        systemctl try-restart cdrstats-collector.service || true
    fi
fi
if [ "$fresh" = yes ]; then
    echo "cdrstats-collector: set [database] url in /etc/cdrstats/collector.toml, then:"
    echo "  sudo -u cdrstats cdrstats db upgrade && systemctl start cdrstats-collector"
fi
exit 0
