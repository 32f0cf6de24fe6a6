"""gRPC transport: servicers that translate protobuf ↔ domain calls, and the server."""
