#!/usr/bin/env python3
"""A real gRPC peer (grpcio, no generated code) for weir's integration tests.

Messages are raw bytes (identity serialisation); payloads are UTF-8 text.

    peer.py server
    peer.py client HOST:PORT METHOD PAYLOAD [--timeout SECONDS]
                   [--metadata KEY=VALUE ...] [--count N]

server
    Serves `weir.test.Echo` over insecure HTTP/2 (h2c) on 127.0.0.1, on a port
    chosen by the OS, prints one line `PORT <n>` and serves until killed or
    until its stdin reaches EOF (so a test process that dies takes the server
    with it; give it a piped stdin -- a stdin that is /dev/null is ignored).

      Unary   (unary-unary)  `fail:<CODE>:<message>` aborts with that
                             grpc.StatusCode name and message; `slow:<ms>`
                             sleeps first; otherwise answers the JSON
                             {"echo": <payload>, "metadata": {<k>: <v>}} built
                             from the invocation metadata it received (last
                             value wins, `-bin` values base64). Sends initial
                             metadata `x-initial: yes` and trailing metadata
                             `x-trailer: done`, `x-peer-method: Unary`.
      Stream  (unary-stream) payload `N` (or `N:<interval_ms>`): yields
                             `msg-0` .. `msg-(N-1)` (pausing between them),
                             trailing metadata `x-trailer: streamed`.
      Collect (stream-unary) answers all requests joined by `,`, trailing
                             metadata `x-count: <number of requests>`.
      Chat    (bidi)         answers `ack:<message>` to each request at once.

client
    Calls METHOD (`Unary`, `Stream`, `Collect`, `Chat`; any other name is
    called as unary-unary `/weir.test.Echo/<name>`, and a name containing `/`
    as that full path) over an insecure channel, never through a proxy, and
    prints one JSON line:

      {"code": "OK" | "<StatusCode name>", "details": str | null,
       "responses": [<text>, ...], "initial_metadata": {k: v},
       "trailing_metadata": {k: v}, "elapsed_ms": float}

    `Collect` sends `--count` requests `part-0` .. `part-(N-1)` and `Chat`
    sends `m0` .. `m(N-1)`, each only once the previous ack arrived (PAYLOAD is
    ignored for both). Exits 0 whenever the JSON was printed, even when the
    call failed; 2 on usage errors.
"""
import argparse
import base64
import json
import os
import queue
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "weir.test.Echo"


def metadata_dict(pairs):
    """gRPC metadata as {key: value}: keys lower case, last value wins, binary
    (`-bin`) values base64-encoded."""
    out = {}
    for key, value in pairs or ():
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode("ascii")
        out[key.lower()] = value
    return out


# ---------------------------------------------------------------- server --


def sleep_while_active(context, seconds):
    """Sleep, but give up early once the call is cancelled or expired."""
    deadline = time.monotonic() + seconds
    while context.is_active():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.05))


def unary(request, context):
    text = request.decode("utf-8", "replace")
    if text.startswith("fail:"):
        _, code_name, message = (text.split(":", 2) + [""])[:3]
        code = getattr(grpc.StatusCode, code_name, None)
        if code is None or code is grpc.StatusCode.OK:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown status code {code_name!r}")
        context.abort(code, message)
    if text.startswith("slow:"):
        try:
            millis = float(text[len("slow:"):])
        except ValueError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad slow payload {text!r}")
        sleep_while_active(context, millis / 1000.0)
    context.send_initial_metadata((("x-initial", "yes"),))
    context.set_trailing_metadata((("x-trailer", "done"), ("x-peer-method", "Unary")))
    body = {"echo": text, "metadata": metadata_dict(context.invocation_metadata())}
    return json.dumps(body).encode("utf-8")


def stream(request, context):
    text = request.decode("utf-8", "replace")
    count, _, interval = text.partition(":")
    try:
        count = int(count)
        interval = float(interval) / 1000.0 if interval else 0.0
    except ValueError:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad stream payload {text!r}")
    for i in range(count):
        if i and interval:
            sleep_while_active(context, interval)
        yield f"msg-{i}".encode()
    context.set_trailing_metadata((("x-trailer", "streamed"),))


def collect(request_iterator, context):
    parts = [message.decode("utf-8", "replace") for message in request_iterator]
    context.set_trailing_metadata((("x-count", str(len(parts))),))
    return ",".join(parts).encode("utf-8")


def chat(request_iterator, context):
    for message in request_iterator:
        yield b"ack:" + message


def stdin_is_devnull():
    try:
        return os.path.samestat(os.fstat(sys.stdin.fileno()), os.stat(os.devnull))
    except (OSError, ValueError, AttributeError):
        return False


def serve():
    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Collect": grpc.stream_unary_rpc_method_handler(collect),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), handlers=(handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    if not port:
        sys.exit("peer.py: could not bind 127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)

    if not stdin_is_devnull():
        def watch_stdin():
            try:  # os.read, not sys.stdin: no buffered-reader lock held at shutdown
                while os.read(sys.stdin.fileno(), 4096):
                    pass
            except (OSError, ValueError):
                pass
            server.stop(0)

        threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()
    server.wait_for_termination()


# ---------------------------------------------------------------- client --


def call(target, method, payload, timeout, metadata, count):
    for name in ("http_proxy", "https_proxy", "grpc_proxy", "all_proxy", "no_proxy"):
        os.environ.pop(name, None)
        os.environ.pop(name.upper(), None)
    channel = grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])
    path = method if "/" in method else f"/{SERVICE}/{method}"
    path = path if path.startswith("/") else "/" + path
    kind = {"Stream": "stream", "Collect": "collect", "Chat": "chat"}.get(method, "unary")
    result = {"code": "OK", "details": None, "responses": [], "initial_metadata": {},
              "trailing_metadata": {}, "elapsed_ms": 0.0}
    rpc = None  # the grpc.Call whose outcome to report
    started = time.perf_counter()
    try:
        if kind == "unary":
            response, rpc = channel.unary_unary(path).with_call(
                payload.encode("utf-8"), timeout=timeout, metadata=metadata)
            result["responses"].append(response.decode("utf-8", "replace"))
        elif kind == "collect":
            parts = (f"part-{i}".encode() for i in range(count))
            response, rpc = channel.stream_unary(path).with_call(
                parts, timeout=timeout, metadata=metadata)
            result["responses"].append(response.decode("utf-8", "replace"))
        elif kind == "stream":
            rpc = channel.unary_stream(path)(payload.encode("utf-8"), timeout=timeout, metadata=metadata)
            for response in rpc:
                result["responses"].append(response.decode("utf-8", "replace"))
        else:  # chat: one request in flight at a time, fed through a queue
            outbox = queue.Queue()
            end = object()

            def requests():
                while (message := outbox.get()) is not end:
                    yield message

            rpc = channel.stream_stream(path)(requests(), timeout=timeout, metadata=metadata)
            try:
                for i in range(count):
                    outbox.put(f"m{i}".encode())
                    result["responses"].append(next(rpc).decode("utf-8", "replace"))
            finally:
                outbox.put(end)  # half-close, also when the call failed
            for response in rpc:  # nothing more is expected; wait for the status
                result["responses"].append(response.decode("utf-8", "replace"))
    except grpc.RpcError as error:
        rpc = error  # the error object is also a grpc.Call
    except StopIteration:  # the server ended the bidi call before acking
        pass
    result["elapsed_ms"] = round((time.perf_counter() - started) * 1000.0, 3)
    if rpc is not None:
        code = rpc.code()
        result["code"] = code.name if code is not None else "UNKNOWN"
        result["details"] = rpc.details() or None
        result["initial_metadata"] = metadata_dict(rpc.initial_metadata())
        result["trailing_metadata"] = metadata_dict(rpc.trailing_metadata())
    channel.close()
    return result


def parse_metadata(items, parser):
    pairs = []
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--metadata wants KEY=VALUE, got {item!r}")
        key = key.lower()
        pairs.append((key, value.encode("utf-8") if key.endswith("-bin") else value))
    return tuple(pairs)


def main():
    parser = argparse.ArgumentParser(description="gRPC peer for weir's integration tests")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("server", help="serve weir.test.Echo on 127.0.0.1:0")
    client = commands.add_parser("client", help="make one call, print a JSON line")
    client.add_argument("target", help="HOST:PORT")
    client.add_argument("method", help="Unary, Stream, Collect, Chat (or another method name/path)")
    client.add_argument("payload")
    client.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
    client.add_argument("--metadata", action="extend", nargs="+", default=[], metavar="KEY=VALUE")
    client.add_argument("--count", type=int, default=3, help="requests for Collect and Chat")
    args = parser.parse_args()

    if args.command == "server":
        serve()
        return
    metadata = parse_metadata(args.metadata, parser)
    result = call(args.target, args.method, args.payload, args.timeout, metadata or None, args.count)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
