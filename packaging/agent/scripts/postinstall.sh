#!/bin/sh
# cdrstats-agent: after unpacking (deb postinst: configure [OLD-VERSION]; rpm %post: 1|2).
set -e
fresh=no
case "$1" in
    configure) [ -z "$2" ] && fresh=yes ;;
    1) fresh=yes ;;
    2) ;;
    *) exit 0 ;;  # abort-upgrade, abort-remove...: nothing to redo
esac

# The state directory (spool, key, identity): the agent's alone.
install -d -m 0700 -o cdrstats-agent -g cdrstats-agent /var/lib/cdrstats-agent
# The configuration may hold database passwords: readable by the agent's group only (the
# directory stays 0755: the collector's package keeps its own file there).
if [ -f /etc/cdrstats/agent.toml ]; then
    chgrp cdrstats-agent /etc/cdrstats/agent.toml
    chmod 0640 /etc/cdrstats/agent.toml
fi

# Groups owning the switches' CDR files: the unit gets them as SupplementaryGroups (only those
# that exist, and only at the first installation: after that the file is the administrator's).
dropin=/etc/systemd/system/cdrstats-agent.service.d
if [ "$fresh" = yes ] && [ ! -e "$dropin/10-switch-groups.conf" ]; then
    groups=""
    for g in asterisk freeswitch kamailio; do
        if getent group "$g" >/dev/null; then groups="$groups $g"; fi
    done
    if [ -n "$groups" ]; then
        mkdir -p "$dropin"
        {
            echo "# Written by the cdrstats-agent package at installation (edit freely; removed on purge)."
            echo "# Groups whose members may read the switch's CDR files."
            echo "[Service]"
            echo "SupplementaryGroups=${groups# }"
        } >"$dropin/10-switch-groups.conf"
    fi
fi

# Byte-compile the library tree for each Python that will run it (the unit cannot write
# __pycache__ under ProtectSystem=strict).
for tree in /opt/cdrstats-agent/lib/python3.*; do
    py=/usr/bin/${tree##*/}
    if [ -x "$py" ]; then
        "$py" -m compileall -q -j 0 "$tree" >/dev/null 2>&1 || true
    fi
done

if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    if [ "$fresh" = yes ]; then
        # Enabled for the next boot, not started: it needs a source and an enrollment first.
        systemctl enable cdrstats-agent.service >/dev/null 2>&1 || true
    else
        systemctl try-restart cdrstats-agent.service || true
    fi
fi
if [ "$fresh" = yes ]; then
    echo "cdrstats-agent: edit /etc/cdrstats/agent.toml, then:"
    echo "  sudo -u cdrstats-agent cdrstats-agent enroll http://COLLECTOR:8080 TOKEN"
    echo "  sudo -u cdrstats-agent cdrstats-agent check && systemctl start cdrstats-agent"
fi
exit 0
