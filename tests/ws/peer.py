#!/usr/bin/env python3
"""A real WebSocket peer (the `websockets` asyncio API) for weir's integration tests.

    peer.py server
    peer.py client WS_URL [--messages N] [--size BYTES] [--idle SECONDS]
                   [--header NAME=VALUE ...]

server
    Listens on 127.0.0.1, on a port chosen by the OS, prints one line
    `PORT <n>` and serves until SIGTERM or until its stdin reaches EOF (give
    it a piped stdin; a stdin that is /dev/null is ignored). Every handshake
    is answered with the extra header `x-ws-upstream: yes`. On each connection
    it first sends one text message, the JSON
    {"path": <request target>, "headers": {<lower-case name>: <value>}} of the
    handshake it received (repeated headers joined with ", "), then echoes
    every message back unchanged (text as text, binary as binary).
    No compression, no keepalive pings, no message size limit.

client
    Connects (extra handshake headers from --header, no compression, no
    proxy, no keepalive pings), reads the handshake-info message, then sends
    N (default 3) text messages `msg-<i>` and N binary messages of --size
    bytes (default 1024, `bytes([i % 256]) * size`), one at a time, checking
    each echo. With --idle it then sends nothing for that long and records
    whether the other side closed the connection meanwhile. Prints one JSON
    line:

      {"ok": bool, "handshake_status": int | null, "response_headers": {...},
       "upstream_saw": <handshake-info JSON> | null, "echoed": int,
       "closed_while_idle": bool, "closed_after_ms": float | null,
       "close_code": int | null, "close_reason": str | null,
       "error": str | null}

    A refused handshake (e.g. 401/404 from the gateway) gives ok=false, its
    HTTP status in handshake_status and its headers in response_headers.
    close_code/close_reason describe a close received while idle.
    Exits 0 whenever the JSON was printed; 2 on usage errors.
"""
import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time

try:
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve
except ImportError:  # websockets < 13
    sys.exit("tests/ws/peer.py needs websockets >= 13 (the websockets.asyncio API)")
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

OPEN_TIMEOUT = 10.0  # seconds for the TCP connect + handshake
RECV_TIMEOUT = 10.0  # seconds to wait for any one expected message


def header_dict(headers):
    """HTTP headers as {lower-case name: value}, repeated ones joined by ", "."""
    out = {}
    for name, value in headers.raw_items():
        name = name.lower()
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


# ---------------------------------------------------------------- server --


async def echo(connection):
    request = connection.request
    info = {"path": request.path, "headers": header_dict(request.headers)}
    try:
        await connection.send(json.dumps(info))
        async for message in connection:
            await connection.send(message)
    except ConnectionClosed:
        pass


def add_upstream_header(connection, request, response):
    response.headers["x-ws-upstream"] = "yes"
    return response


def stdin_is_devnull():
    try:
        return os.path.samestat(os.fstat(sys.stdin.fileno()), os.stat(os.devnull))
    except (OSError, ValueError, AttributeError):
        return False


def watch_stdin(loop, stop):
    """In a daemon thread: set `stop` once stdin reaches EOF."""
    try:  # os.read, not sys.stdin: a daemon thread inside a buffered read aborts shutdown
        while os.read(sys.stdin.fileno(), 4096):
            pass
    except (OSError, ValueError):
        pass
    loop.call_soon_threadsafe(stop.set)


async def run_server():
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if not stdin_is_devnull():
        threading.Thread(target=watch_stdin, args=(loop, stop), name="stdin-watch", daemon=True).start()
    async with serve(echo, "127.0.0.1", 0, compression=None, ping_interval=None, max_size=None,
                     process_response=add_upstream_header, close_timeout=2) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"PORT {port}", flush=True)
        await stop.wait()
        server.close()  # closes open connections with 1001 (going away)
        await server.wait_closed()


# ---------------------------------------------------------------- client --


async def recv(ws):
    return await asyncio.wait_for(ws.recv(), RECV_TIMEOUT)


async def run_client(args, headers):
    result = {"ok": False, "handshake_status": None, "response_headers": {}, "upstream_saw": None,
              "echoed": 0, "closed_while_idle": False, "closed_after_ms": None,
              "close_code": None, "close_reason": None, "error": None}
    try:
        ws = await connect(args.url, additional_headers=headers, compression=None, proxy=None,
                           ping_interval=None, max_size=None, open_timeout=OPEN_TIMEOUT,
                           close_timeout=2)
    except InvalidStatus as error:  # the server answered, but not with 101
        result["handshake_status"] = error.response.status_code
        result["response_headers"] = header_dict(error.response.headers)
        result["error"] = f"handshake refused: HTTP {error.response.status_code} {error.response.reason_phrase}"
        return result
    except (InvalidHandshake, InvalidURI, OSError, asyncio.TimeoutError) as error:
        result["error"] = f"connect failed: {type(error).__name__}: {error}"
        return result

    result["handshake_status"] = ws.response.status_code
    result["response_headers"] = header_dict(ws.response.headers)
    try:
        first = await recv(ws)
        try:
            result["upstream_saw"] = json.loads(first)
        except (TypeError, ValueError):
            result["upstream_saw"] = first if isinstance(first, str) else first.hex()

        outgoing = [f"msg-{i}" for i in range(args.messages)]
        outgoing += [bytes([i % 256]) * args.size for i in range(args.messages)]
        for i, message in enumerate(outgoing):
            await ws.send(message)
            answer = await recv(ws)
            if answer != message:
                kind = "text" if isinstance(message, str) else "binary"
                got = answer if len(answer) <= 64 else f"{type(answer).__name__} of length {len(answer)}"
                raise ValueError(f"echo mismatch on {kind} message {i}: got {got!r}")
            result["echoed"] += 1

        if args.idle is not None:
            started = time.perf_counter()
            deadline = started + args.idle
            try:
                while (left := deadline - time.perf_counter()) > 0:
                    try:
                        await asyncio.wait_for(ws.recv(), left)  # unexpected messages are ignored
                    except asyncio.TimeoutError:
                        break
            except ConnectionClosed as closed:
                result["closed_while_idle"] = True
                result["closed_after_ms"] = round((time.perf_counter() - started) * 1000.0, 3)
                if closed.rcvd is not None:
                    result["close_code"] = closed.rcvd.code
                    result["close_reason"] = closed.rcvd.reason
        result["ok"] = True
    except ConnectionClosed as closed:
        result["error"] = f"connection closed early: {closed}"
    except asyncio.TimeoutError:
        result["error"] = f"no message within {RECV_TIMEOUT:g}s (after {result['echoed']} echoes)"
    except ValueError as error:
        result["error"] = str(error)
    finally:
        await ws.close()
    return result


def main():
    parser = argparse.ArgumentParser(description="WebSocket peer for weir's integration tests")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("server", help="echo server on 127.0.0.1:0")
    client = commands.add_parser("client", help="connect, exchange messages, print a JSON line")
    client.add_argument("url", help="ws://HOST:PORT/PATH")
    client.add_argument("--messages", type=int, default=3, help="text and binary messages each")
    client.add_argument("--size", type=int, default=1024, help="bytes per binary message")
    client.add_argument("--idle", type=float, default=None, help="seconds to stay idle at the end")
    client.add_argument("--header", action="extend", nargs="+", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()

    if args.command == "server":
        asyncio.run(run_server())
        return
    headers = []
    for item in args.header:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--header wants NAME=VALUE, got {item!r}")
        headers.append((name, value))
    result = asyncio.run(run_client(args, headers))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
