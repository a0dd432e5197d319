"""Exit 0 when ``/readyz`` of the search service on this host returns 200, else 1.

Docker runs this as the API container's health check. It needs only the standard library,
and reads the port from ``PIG_PORT`` (default 8000), the variable ``search-api`` listens on.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("PIG_PORT", "8000")
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        print(f"{url} returned HTTP {error.code}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"{url} is unreachable: {error}", file=sys.stderr)
        return 1
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
