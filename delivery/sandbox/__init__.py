"""A local stand-in for SendGrid, Postmark and Amazon SES, for development, tests and benchmarks."""

from .server import SandboxMessage, SandboxServer

__all__ = ["SandboxMessage", "SandboxServer"]
