"""Personal data that other apps keep about a subscriber, for the privacy export and erasure.

Apps above subscribers (webhooks, for example) hold data about a person that subscribers may not import. Each
registers a contributor here from its AppConfig.ready(): a name (its key in the export) and two functions that
take the normalized address. subscribers.services.privacy calls them; it never needs to know who they are.

Erasers run inside the erasure's transaction, before delivery forgets the address, so that a contributor can
still find its rows through the messages sent to that address. They must not do network I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


class Exporter(Protocol):
    def __call__(self, *, email: str) -> Any:
        """Everything this app holds about the address, JSON-ready."""


class Eraser(Protocol):
    def __call__(self, *, email: str) -> int:
        """Forget the address in this app's rows; returns how many rows were changed."""


@dataclass(frozen=True)
class Contributor:
    name: str
    exporter: Exporter
    eraser: Eraser


# The export's own sections; a contributor may not take their place.
RESERVED_NAMES = frozenset({"profile", "subscriptions", "messages", "suppression"})

_contributors: dict[str, Contributor] = {}


def register(name: str, *, exporter: Exporter, eraser: Eraser) -> None:
    """Add (or, under the same name, replace: ready() may run more than once) a contributor."""
    if name in RESERVED_NAMES:
        raise ValueError(f"{name!r} is a section of the export itself; choose another name.")
    _contributors[name] = Contributor(name=name, exporter=exporter, eraser=eraser)


def contributors() -> list[Contributor]:
    return list(_contributors.values())
