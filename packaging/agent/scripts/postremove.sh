#!/bin/sh
# cdrstats-agent: after removing files (deb postrm: remove|purge|upgrade|...; rpm %postun: 0
# when erased, 1 when upgraded).
# remove: the configuration, the spool and the user stay (dpkg keeps conffiles until purge).
# purge (deb only): everything goes, including CDRs still in the spool and the agent's key.
# rpm has no purge: /etc/cdrstats/agent.toml.rpmsave (if edited), /var/lib/cdrstats-agent and
# the user stay; docs/packaging.md says how to remove them by hand.
set -e
case "$1" in
    remove|purge|0)
        if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
        ;;
esac
if [ "$1" = purge ]; then
    rm -rf /var/lib/cdrstats-agent
    rm -f /etc/systemd/system/cdrstats-agent.service.d/10-switch-groups.conf
    rmdir /etc/systemd/system/cdrstats-agent.service.d 2>/dev/null || true
    rmdir /etc/cdrstats 2>/dev/null || true
    rmdir /opt/cdrstats-agent 2>/dev/null || true
    if getent passwd cdrstats-agent >/dev/null; then userdel cdrstats-agent || true; fi
    if getent group cdrstats-agent >/dev/null; then groupdel cdrstats-agent || true; fi
fi
exit 0
