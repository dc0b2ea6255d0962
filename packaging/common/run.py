"""Entry of a packaged CDR-Stats program: puts this Python's library tree on sys.path, runs it.

Run by bin/<command> as `python3.X -I lib/run.py ARGS` (-I: no PYTHONPATH, no user site, no
current directory). packaging/build.py writes it with the program's entry point. Extra
distributions installed by the administrator with
`pip install --target /usr/local/lib/<package>/python3.X ...` (third-party agent plugins) are
found there, after the packaged ones (they cannot shadow a packaged module).
"""

import importlib
import os
import sys

ENTRY = "__ENTRY__"
LOCAL = "__LOCAL__"

version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, version))
local = os.path.join(LOCAL, version)
if os.path.isdir(local):
    sys.path.append(local)

module, _, function = ENTRY.partition(":")
sys.exit(getattr(importlib.import_module(module), function)())
