"""A local stand-in for SendGrid, Postmark and Amazon SES, for development, tests and benchmarks."""

from .messages import SandboxMessage
from .server import SandboxServer

__all__ = ["SandboxMessage", "SandboxServer"]
