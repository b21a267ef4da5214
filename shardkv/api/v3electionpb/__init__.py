"""Generated protobuf/gRPC modules; regenerate with scripts/gen_protos.sh."""
