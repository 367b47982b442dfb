"""Python client library and command line for the Stylize API (grpc and the generated code only)."""

from client.client import DEFAULT_TARGET, StylizeClient

__all__ = ["DEFAULT_TARGET", "StylizeClient"]
