"""Entry of the packaged agent: puts this Python's library tree on sys.path, runs the CLI.

Run by bin/cdrstats-agent as `python3.X -I lib/run.py ARGS` (-I: no PYTHONPATH, no user site,
no current directory). Third-party plugins installed by the administrator with
`pip install --target /usr/local/lib/cdrstats-agent/python3.X PLUGIN` are found there, after
the packaged ones (they cannot shadow a packaged module).
"""

import os
import sys

version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, version))
local = os.path.join("/usr/local/lib/cdrstats-agent", version)
if os.path.isdir(local):
    sys.path.append(local)

from cdrstats_agent.cli import main  # noqa: E402

sys.exit(main())
