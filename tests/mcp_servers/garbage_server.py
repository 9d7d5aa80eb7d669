"""Not an MCP server: answers every line it reads with a line that is not JSON-RPC."""

from __future__ import annotations

import sys

for _line in sys.stdin:
    sys.stdout.write("garbage, not json-rpc\n")
    sys.stdout.flush()
