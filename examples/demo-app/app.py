"""The compose quick start's protected app: answers every request with the identity nginx passed.

Behind nginx and the gateway (``examples/nginx``), the ``X-Auth-Request-*`` headers are the
gateway's, never the client's: nginx sets each from the auth response. Standard library only.

    python app.py [port]    (default 9000)
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

IDENTITY = ("x-auth-request-user", "x-auth-request-email", "x-auth-request-name", "x-auth-request-session-id")


class Echo(BaseHTTPRequestHandler):
    """``GET`` anything: the identity headers as JSON."""

    def do_GET(self) -> None:
        """Answer with the identity this request arrived with."""
        body = json.dumps({name: self.headers.get(name, "") for name in IDENTITY} | {"path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    """Serve on all interfaces, on the port given (default 9000)."""
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    ThreadingHTTPServer(("0.0.0.0", port), Echo).serve_forever()  # noqa: S104  (a container's port)


if __name__ == "__main__":
    main()
