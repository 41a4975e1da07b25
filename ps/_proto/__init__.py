"""Generated protobuf and gRPC stubs (private). Regenerate with: python protos/generate.py"""
