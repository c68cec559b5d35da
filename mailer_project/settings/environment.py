"""The one `env` every settings module reads from, and the helpers that make a missing secret fail loudly."""

from __future__ import annotations

import sys
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()


def require(name: str, *, when_missing_ok: bool, default: str = "") -> str:
    """Read a secret; in production (DEBUG off) a missing one stops start-up with one line naming it."""
    value = env.str(name, default="")
    if value:
        return value
    if when_missing_ok:
        return default
    sys.stderr.write(f"Configuration error: the environment variable {name} must be set when DEBUG is off.\n")
    raise SystemExit(2)
