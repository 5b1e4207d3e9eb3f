#!/usr/bin/env python3
"""A real gRPC server for weir's protocol-translation tests: `shop.v1.Orders`
from transcode/tests/protos/shop/v1/shop.proto, with messages compiled at
start by grpcio-tools (`grpc.protos_and_services`, no generated files).

    orders.py server

Serves insecure HTTP/2 (h2c) on 127.0.0.1, on a port chosen by the OS,
prints one line `PORT <n>` and serves until killed or until its stdin
reaches EOF (as tests/grpc/peer.py does).

Every answer echoes the request's `x-*` metadata: as initial metadata (HTTP
response headers once translated) and, for orders, in `labels`.

  GetOrder     id `denied`: PERMISSION_DENIED "no access", Trailers-Only (no
               metadata sent first); id `missing`: NOT_FOUND "order missing not found" with a
               google.rpc.Status detail shop.v1.OrderErrorInfo; otherwise an
               order `id` with customer `c-<id>`, the `shop`, `fields` and
               `status` of the request in `tags`, and two items when
               `include_items`.
  CreateOrder  the order `o-1` made of the request (status PENDING,
               total_cents = sum of quantity * unit_price * 100).
  ListOrders   `page_size` orders `o-0`.. (20 ms apart); customer_id `fail`
               aborts with UNAVAILABLE "shard down" after them.
  Ping         message echoed, count 1.
"""

import os
import sys
import threading
import time
from concurrent import futures

import grpc
from google.protobuf import any_pb2

HERE = os.path.dirname(os.path.abspath(__file__))
PROTOS = os.path.join(HERE, "..", "..", "transcode", "tests", "protos")
sys.path.insert(0, os.path.abspath(PROTOS))

shop, shop_grpc = grpc.protos_and_services("shop/v1/shop.proto")
status_pb2 = grpc.protos("google/rpc/status.proto")


def echoed(context):
    return [(k, v) for k, v in context.invocation_metadata() if k.startswith("x-") and not k.endswith("-bin")]


class Orders(shop_grpc.OrdersServicer):
    def GetOrder(self, request, context):
        if request.id == "denied":
            # Before any metadata: a Trailers-Only answer.
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "no access")
        context.send_initial_metadata(echoed(context))
        if request.id == "missing":
            info = shop.OrderErrorInfo(order_id=request.id, reason="no such order")
            detail = any_pb2.Any()
            detail.Pack(info)
            status = status_pb2.Status(code=grpc.StatusCode.NOT_FOUND.value[0], message="order missing not found",
                                       details=[detail])
            context.set_trailing_metadata([("grpc-status-details-bin", status.SerializeToString())])
            context.abort(grpc.StatusCode.NOT_FOUND, "order missing not found")
        tags = [f"shop={request.shop}", f"status={shop.Status.Name(request.status)}"] + list(request.fields)
        order = shop.Order(id=request.id, customer_id=f"c-{request.id}", tags=tags, labels=dict(echoed(context)))
        if request.include_items:
            order.items.add(sku="A", quantity=1, unit_price=2.5)
            order.items.add(sku="B", quantity=3, unit_price=1.0)
        return order

    def CreateOrder(self, request, context):
        context.send_initial_metadata(echoed(context))
        total = sum(round(i.quantity * i.unit_price * 100) for i in request.items)
        return shop.Order(id="o-1", customer_id=request.customer_id, items=request.items, tags=request.tags,
                          status=shop.STATUS_PENDING, total_cents=total, labels=dict(echoed(context)))

    def ListOrders(self, request, context):
        context.send_initial_metadata(echoed(context))
        for i in range(request.page_size):
            if i:
                time.sleep(0.02)
            yield shop.Order(id=f"o-{i}", customer_id=request.customer_id)
        if request.customer_id == "fail":
            context.abort(grpc.StatusCode.UNAVAILABLE, "shard down")

    def Ping(self, request, context):
        return shop.PingResponse(message=request.message, count=1)


def stdin_is_devnull():
    try:
        return os.path.samestat(os.fstat(sys.stdin.fileno()), os.stat(os.devnull))
    except (OSError, ValueError, AttributeError):
        return False


def serve():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    shop_grpc.add_OrdersServicer_to_server(Orders(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    if not port:
        sys.exit("orders.py: could not bind 127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    if not stdin_is_devnull():
        def watch_stdin():
            try:
                while os.read(sys.stdin.fileno(), 4096):
                    pass
            except (OSError, ValueError):
                pass
            server.stop(0)

        threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()
    server.wait_for_termination()


if __name__ == "__main__":
    if sys.argv[1:] != ["server"]:
        sys.exit(__doc__)
    serve()
