"""An authorization service for the ext_authz tests: a real HTTP server
process the gateway calls through its `outbound` capability.

`server`: listens on 127.0.0.1, prints `PORT n`, then answers every request
by its `authorization` header:

- `Bearer good`: 200 with `x-user-id: 42` and `x-debug: internal`;
- `Bearer slow`: the same after 2 s;
- `Bearer boom`: 500 `{"error": "authz crashed"}`;
- anything else: 401 with `www-authenticate: Bearer realm="weir"` and
  `{"error": "denied"}`.

`GET /_hits` answers how many checks it has served (as JSON), and what the
last one carried (method, path, headers).
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

hits = 0
last = {}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, headers, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self):
        global hits, last
        if self.path == "/_hits":
            with lock:
                self.answer(200, [], {"hits": hits, "last": last})
            return
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        with lock:
            hits += 1
            last = {"method": self.command, "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
        token = self.headers.get("authorization", "")
        if token == "Bearer slow":
            time.sleep(2)
            token = "Bearer good"
        if token == "Bearer good":
            self.answer(200, [("x-user-id", "42"), ("x-debug", "internal")], {})
        elif token == "Bearer boom":
            self.answer(500, [], {"error": "authz crashed"})
        else:
            self.answer(401, [("www-authenticate", 'Bearer realm="weir"'), ("x-debug", "internal")], {"error": "denied"})

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = handle_any


def main():
    if sys.argv[1:] != ["server"]:
        sys.exit("usage: server.py server")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
