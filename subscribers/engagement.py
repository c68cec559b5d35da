"""The engagement score: 0-100, raised by opens and clicks, halving every 30 days without them.

Stored decay-free (Subscriber.score_anchor) so that it never needs a periodic rewrite: with
d(t) = days from EPOCH to t and r = ln 2 / HALF_LIFE_DAYS,

    score(t)  = min(100, exp(anchor - r * d(t)))         (0 when anchor is NULL: never engaged)
    anchor    = ln(score(t0)) + r * d(t0)                 (written when an event moves the score at t0)

so "score at least N at time t" is `anchor >= ln(N) + r * d(t)`: one comparison on one column, and ordering by
the anchor orders by the current score. docs/ENGAGEMENT.md gives the reasoning and examples.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from django.utils import timezone

EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
HALF_LIFE_DAYS = 30.0
DECAY_PER_DAY = math.log(2) / HALF_LIFE_DAYS
MAX_SCORE = 100.0
POINTS = {"open": 10.0, "click": 25.0}


def _days(at: datetime | None) -> float:
    return ((at or timezone.now()) - EPOCH).total_seconds() / 86400.0


def score_at(anchor: float | None, at: datetime | None = None) -> float:
    if anchor is None:
        return 0.0
    return min(MAX_SCORE, math.exp(anchor - DECAY_PER_DAY * _days(at)))


def score_now(anchor: float | None, at: datetime | None = None) -> int:
    """The score as people read it: a whole number from 0 to 100."""
    return round(score_at(anchor, at))


def anchor_after(anchor: float | None, *, points: float, at: datetime) -> float:
    """The anchor once `points` are added at `at` (the score is capped at 100 before it is stored)."""
    score = min(MAX_SCORE, score_at(anchor, at) + points)
    return math.log(score) + DECAY_PER_DAY * _days(at)


def anchor_threshold(score: float, at: datetime | None = None) -> float | None:
    """The smallest anchor whose score is at least `score` at `at`; None when every subscriber qualifies."""
    if score <= 0:
        return None
    return math.log(score) + DECAY_PER_DAY * _days(at)
