#!/bin/sh
# Runs a CDR-Stats program carried under /opt/<package> with the distribution's Python.
# The package carries one library tree per Python version (lib/python3.X, built for 3.11, 3.12
# and 3.13); this picks /usr/bin/python3 when a tree matches its version, else the newest
# /usr/bin/python3.X that has one. Installed as /opt/<package>/bin/<command> and linked from
# /usr/bin; it works from any copy of the tree (it finds the tree from its own path).
# CDRSTATS_PYTHON=/path/to/python3.X forces an interpreter.
set -e
self=$(readlink -f "$0")
root=${self%/bin/*}
name=${self##*/}
candidates="${CDRSTATS_PYTHON:-} /usr/bin/python3 /usr/bin/python3.13 /usr/bin/python3.12 /usr/bin/python3.11"
for py in $candidates; do
    [ -x "$py" ] || continue
    real=$(readlink -f "$py")
    version=${real##*/python}
    if [ -d "$root/lib/python$version" ]; then
        exec "$real" -I "$root/lib/run.py" "$@"
    fi
done
echo "$name: no usable Python found: it needs python3.11, python3.12 or python3.13 in /usr/bin" \
    "(tried:$candidates; carried: $(ls "$root/lib" | grep '^python' | tr '\n' ' '))" >&2
echo "$name: install one, e.g. 'apt install python3.11' or 'dnf install python3.11'" >&2
exit 3
