"""An identity provider for the auth plugin's tests: a real HTTP server
process the gateway fetches keys from and introspects tokens with, through
its `outbound` capability. The test drives it (key rotation, tokens).

`server`: listens on 127.0.0.1, prints `PORT n`, then serves

- `GET /.well-known/openid-configuration`: the discovery document, whose
  `jwks_uri` is `http://127.0.0.1:PORT/oauth/keys`;
- `GET /oauth/keys`: the current key set (JWKS), with
  `cache-control: max-age=N` when the test set one;
- `POST /oauth/introspect` (RFC 7662): HTTP Basic `weir:s3cret` required
  (else 401); the answer the test registered for the form's `token`, else
  `{"active": false}`;
- `POST /_keys` `{"keys": [...], "max_age": N | null}`: publish a key set
  (a rotation);
- `POST /_tokens` `{"TOKEN": {...answer...}}`: register introspection answers;
- `GET /_hits`: how many times each path was asked, as JSON.
"""

import base64
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

CLIENT = ("weir", "s3cret")

lock = threading.Lock()
keys = {"keys": []}
max_age = None
tokens = {}
hits = {}
port = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def count(self):
        with lock:
            hits[self.path] = hits.get(self.path, 0) + 1

    def do_GET(self):
        if self.path == "/_hits":
            with lock:
                self.answer(200, dict(hits))
            return
        self.count()
        if self.path == "/.well-known/openid-configuration":
            base = f"http://127.0.0.1:{port}"
            self.answer(200, {
                "issuer": "https://idp.test/",
                "jwks_uri": f"{base}/oauth/keys",
                "introspection_endpoint": f"{base}/oauth/introspect",
            })
        elif self.path == "/oauth/keys":
            with lock:
                doc, age = json.loads(json.dumps(keys)), max_age
            headers = [("cache-control", f"max-age={age}")] if age is not None else []
            self.answer(200, doc, headers)
        else:
            self.answer(404, {"error": "not found"})

    def do_POST(self):
        global keys, max_age
        data = self.body()
        if self.path == "/_keys":
            doc = json.loads(data)
            with lock:
                keys = {"keys": doc["keys"]}
                max_age = doc.get("max_age")
            self.answer(200, {"ok": True})
            return
        if self.path == "/_tokens":
            with lock:
                tokens.update(json.loads(data))
            self.answer(200, {"ok": True})
            return
        self.count()
        if self.path != "/oauth/introspect":
            self.answer(404, {"error": "not found"})
            return
        expected = "Basic " + base64.b64encode(f"{CLIENT[0]}:{CLIENT[1]}".encode()).decode()
        if self.headers.get("authorization") != expected:
            self.answer(401, {"error": "invalid_client"}, [("www-authenticate", 'Basic realm="idp"')])
            return
        if self.headers.get("content-type", "").split(";")[0] != "application/x-www-form-urlencoded":
            self.answer(400, {"error": "invalid_request"})
            return
        form = parse_qs(data.decode())
        token = form.get("token", [""])[0]
        with lock:
            found = tokens.get(token, {"active": False})
        self.answer(200, found)


def main():
    global port
    if sys.argv[1:] != ["server"]:
        sys.exit("usage: server.py server")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = httpd.server_address[1]
    print(f"PORT {port}", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
