#!/usr/bin/env python3
"""A WebSocket client over HTTP/2 (RFC 8441 extended CONNECT), written on
Python's `h2` with the WebSocket framing done by hand, for weir's
integration tests (no common library speaks WebSocket over HTTP/2).

    rfc8441.py HOST:PORT PATH [--messages N]

Connects in cleartext with HTTP/2 prior knowledge, waits for the server's
SETTINGS_ENABLE_CONNECT_PROTOCOL, sends `CONNECT` with `:protocol
websocket`, then over the stream reads the first message (the handshake
info `tests/ws/peer.py server` sends), sends N masked text messages
`h2-msg-<i>` and checks each echo, and closes. Prints one JSON line:

    {"status": int | null, "connect_enabled": bool, "upstream_saw": {...} | null,
     "echoed": int, "error": str | null}
"""

import argparse
import json
import os
import socket
import struct
import sys

import h2.config
import h2.connection
import h2.events
import h2.settings


class Stream:
    """One HTTP/2 stream carrying WebSocket frames."""

    def __init__(self, sock, conn, stream_id):
        self.sock, self.conn, self.id = sock, conn, stream_id
        self.buf = b""
        self.ended = False

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def pump(self):
        """Read from the socket once; collect this stream's data."""
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed")
        for ev in self.conn.receive_data(chunk):
            if isinstance(ev, h2.events.DataReceived) and ev.stream_id == self.id:
                self.buf += ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)) and ev.stream_id == self.id:
                self.ended = True
        self.flush()

    def send_frame(self, opcode, payload):
        """A masked client frame (RFC 6455 §5.2)."""
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.conn.send_data(self.id, head + mask + masked)
        self.flush()

    def recv_frame(self):
        """The next unmasked server frame: (opcode, payload)."""
        while True:
            frame = parse(self.buf)
            if frame:
                opcode, payload, used = frame
                self.buf = self.buf[used:]
                return opcode, payload
            if self.ended:
                raise ConnectionError("stream ended")
            self.pump()


def parse(buf):
    if len(buf) < 2:
        return None
    opcode, n, i = buf[0] & 0x0F, buf[1] & 0x7F, 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, i = struct.unpack(">H", buf[2:4])[0], 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, i = struct.unpack(">Q", buf[2:10])[0], 10
    if buf[1] & 0x80:
        return None  # servers do not mask
    if len(buf) < i + n:
        return None
    return opcode, buf[i:i + n], i + n


def run(target, path, messages):
    out = {"status": None, "connect_enabled": False, "upstream_saw": None, "echoed": 0, "error": None}
    host, port = target.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    # Wait for the server's settings.
    while not out["connect_enabled"]:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before SETTINGS")
        for ev in conn.receive_data(chunk):
            if isinstance(ev, h2.events.RemoteSettingsChanged):
                setting = ev.changed_settings.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL)
                out["connect_enabled"] = bool(setting and setting.new_value == 1)
                if not out["connect_enabled"]:
                    out["error"] = "server did not enable extended CONNECT"
                    return out
        sock.sendall(conn.data_to_send())
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [
        (":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
        (":path", path), (":authority", target), ("sec-websocket-version", "13"),
    ])
    s = Stream(sock, conn, sid)
    s.flush()
    while out["status"] is None:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response")
        for ev in conn.receive_data(chunk):
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                out["status"] = int(dict(ev.headers)[b":status"])
            elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                s.buf += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, sid)
        s.flush()
    if out["status"] != 200:
        out["error"] = f"CONNECT answered {out['status']}"
        return out
    opcode, payload = s.recv_frame()
    out["upstream_saw"] = json.loads(payload)
    for i in range(messages):
        text = f"h2-msg-{i}".encode()
        s.send_frame(0x1, text)
        opcode, payload = s.recv_frame()
        if (opcode, payload) != (0x1, text):
            out["error"] = f"echo {i}: got opcode {opcode} {payload!r}"
            return out
        out["echoed"] += 1
    s.send_frame(0x8, struct.pack(">H", 1000))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("path")
    ap.add_argument("--messages", type=int, default=3)
    args = ap.parse_args()
    try:
        out = run(args.target, args.path, args.messages)
    except Exception as e:  # reported, not raised: the test reads the JSON
        out = {"status": None, "connect_enabled": False, "upstream_saw": None, "echoed": 0, "error": repr(e)}
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
