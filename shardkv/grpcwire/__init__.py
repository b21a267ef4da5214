"""gRPC over HTTP/2 served from Python's asyncio, for the client API's hot path."""
from shardkv.grpcwire.server import Context, Server

__all__ = ["Context", "Server"]
