#!/usr/bin/env bash
# Regenerates the descriptor sets used by weir-transcode's unit tests.
# Needs grpcio-tools (`python3 -m pip install --quiet grpcio-tools`), which
# bundles google/protobuf/*.proto; google/api and google/rpc are vendored
# here from googleapis.
set -euo pipefail
cd "$(dirname "$0")/../../.."
python3 -m grpc_tools.protoc -I transcode/tests/protos --include_imports \
  --descriptor_set_out=transcode/tests/protos/shop.pb shop/v1/shop.proto
python3 -m grpc_tools.protoc -I transcode/tests/protos --include_imports \
  --descriptor_set_out=transcode/tests/protos/broken.pb broken/v1/broken.proto
