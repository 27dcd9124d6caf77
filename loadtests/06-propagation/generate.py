#!/usr/bin/env python3
"""Writes scenario 6's starting configs for every proxy (too large to commit).

    python3 loadtests/06-propagation/generate.py [OUT_DIR]   # default: OUT_DIR=./generated

Creates OUT_DIR/sluice/ (manifests for `sluice run --config`), OUT_DIR/nginx/nginx.conf,
OUT_DIR/haproxy/{haproxy.cfg,routes.map} and, where Caddy runs this scenario, OUT_DIR/caddy/Caddyfile.
loadtests/run.py renders the same files into a temp dir at run time (loadtests/render.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import run  # noqa: E402

out = Path(sys.argv[1] if len(sys.argv) > 1 else "generated")
paths = run.write_configs(6, out)
print(f"wrote {len(paths)} files under {out}/")
