"""The segment rule language, compiled to one SQL query over subscribers.

A rule is JSON: a group or a condition.

    {"all": [rule, ...]}        every rule holds          {"any": [rule, ...]}   at least one holds
    {"not": rule}               the rule does not hold
    {"field": F, "op": OP, "value": V}

Fields and their operators (text comparisons ignore case):

    email, domain, name     eq, ne, contains, starts_with, ends_with, in, not_in
    status                  eq, ne, in, not_in                 (active, unsubscribed, cleaned)
    list                    in, not_in                         (list slugs; "in" = an active subscription)
    attribute.<key>         eq, ne, contains, starts_with, ends_with, in, not_in, exists,
                            gt, gte, lt, lte                   (a number compares numerically, text as text)
    created                 before, after (ISO date or date-time), within_days (N)
    opened, clicked         within_days (N), not_within_days (N), never (no value)
    score                   gte, gt, lte, lt (0-100)
    sent                    gte, lte (campaigns sent)

Every mistake is reported with the path of the rule that holds it, e.g. `all[1].any[0].op`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Exists, F, FloatField, Func, OuterRef, Q, QuerySet
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Lower
from django.db.models.lookups import (
    GreaterThan,
    GreaterThanOrEqual,
    IContains,
    IEndsWith,
    IExact,
    In,
    IsNull,
    IStartsWith,
    LessThan,
    LessThanOrEqual,
)
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from core.exceptions import ApplicationError
from subscribers.engagement import anchor_threshold
from subscribers.models import MailingList, Subscriber, Subscription

MAX_DEPTH = 8
MAX_CONDITIONS = 100

TEXT_OPS = {"eq", "ne", "contains", "starts_with", "ends_with", "in", "not_in"}
NUMBER_OPS = {"gt", "gte", "lt", "lte"}
FIELD_OPS: dict[str, set[str]] = {
    "email": TEXT_OPS,
    "domain": TEXT_OPS,
    "name": TEXT_OPS,
    "status": {"eq", "ne", "in", "not_in"},
    "list": {"in", "not_in"},
    "attribute": TEXT_OPS | NUMBER_OPS | {"exists"},
    "created": {"before", "after", "within_days"},
    "opened": {"within_days", "not_within_days", "never"},
    "clicked": {"within_days", "not_within_days", "never"},
    "score": NUMBER_OPS,
    "sent": {"gte", "lte"},
}
_LOOKUP = {"eq": IExact, "contains": IContains, "starts_with": IStartsWith, "ends_with": IEndsWith}
_COMPARE = {"gt": GreaterThan, "gte": GreaterThanOrEqual, "lt": LessThan, "lte": LessThanOrEqual}


class SegmentRuleInvalid(ApplicationError):
    code = "segment_rule_invalid"

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"Segment rule {path}: {problem}", {"path": path})
        self.path = path


@dataclass
class _Compiler:
    now: datetime
    conditions: int = 0

    def rule(self, rule: Any, path: str, depth: int) -> Q:
        if not isinstance(rule, dict):
            raise SegmentRuleInvalid(path, f"expected an object, found {_shown(rule)}.")
        if depth > MAX_DEPTH:
            raise SegmentRuleInvalid(path, f"groups nest deeper than {MAX_DEPTH} levels.")
        groups = [key for key in ("all", "any", "not") if key in rule]
        if groups:
            if len(rule) != 1:
                extra = sorted(set(rule) - {groups[0]})
                raise SegmentRuleInvalid(path, f"a group has one key ('{groups[0]}'); also found {extra}.")
            key = groups[0]
            if key == "not":
                return ~self.rule(rule["not"], f"{path}.not", depth + 1)
            members = rule[key]
            if not isinstance(members, list) or not members:
                raise SegmentRuleInvalid(f"{path}.{key}", "expected a non-empty list of rules.")
            parts = [self.rule(member, f"{path}.{key}[{i}]", depth + 1) for i, member in enumerate(members)]
            combined = parts[0]
            for part in parts[1:]:
                combined = (combined & part) if key == "all" else (combined | part)
            return combined
        return self.condition(rule, path)

    def condition(self, rule: dict[str, Any], path: str) -> Q:
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise SegmentRuleInvalid(path, f"a segment holds at most {MAX_CONDITIONS} conditions.")
        unknown = sorted(set(rule) - {"field", "op", "value"})
        if unknown:
            raise SegmentRuleInvalid(path, f"unknown key(s) {unknown}; a condition has field, op and value.")
        field, op = rule.get("field"), rule.get("op")
        if not isinstance(field, str) or not field:
            raise SegmentRuleInvalid(f"{path}.field", "missing; expected one of " + ", ".join(_fields()) + ".")
        base, _, key = field.partition(".")
        if base not in FIELD_OPS or (base == "attribute") != bool(key) or (key and base != "attribute"):
            raise SegmentRuleInvalid(
                f"{path}.field", f"unknown field '{field}'; expected one of " + ", ".join(_fields()) + "."
            )
        if op not in FIELD_OPS[base]:
            raise SegmentRuleInvalid(
                f"{path}.op", f"'{op}' does not apply to {base}; use one of {', '.join(sorted(FIELD_OPS[base]))}."
            )
        value = rule.get("value")
        if op != "never" and "value" not in rule:
            raise SegmentRuleInvalid(f"{path}.value", "missing.")
        return getattr(self, f"_{base}")(op, value, key, f"{path}.value")

    # --- fields -------------------------------------------------------------------------------------------

    def _email(self, op: str, value: Any, key: str, path: str) -> Q:
        return _text(F("email"), op, value, path)

    def _domain(self, op: str, value: Any, key: str, path: str) -> Q:
        if op in {"eq", "in", "not_in", "ne"}:
            # The address ends with "@domain": an exact domain match without extracting it per row.
            values = _strings(value, path, many=op in {"in", "not_in"})
            matched = Q()
            for domain in values:
                matched |= Q(email__endswith="@" + domain.lower().lstrip("@"))
            return ~matched if op in {"ne", "not_in"} else matched
        return _text(_Domain("email"), op, value, path)

    def _name(self, op: str, value: Any, key: str, path: str) -> Q:
        return _text(F("name"), op, value, path)

    def _status(self, op: str, value: Any, key: str, path: str) -> Q:
        values = _strings(value, path, many=op in {"in", "not_in"})
        allowed = set(Subscriber.Status.values)
        for item in values:
            if item not in allowed:
                raise SegmentRuleInvalid(path, f"unknown status '{item}'; use one of {', '.join(sorted(allowed))}.")
        matched = Q(status__in=values)
        return ~matched if op in {"ne", "not_in"} else matched

    def _list(self, op: str, value: Any, key: str, path: str) -> Q:
        slugs = _strings(value, path, many=True)
        found = dict(MailingList.objects.filter(slug__in=slugs).values_list("slug", "pk"))
        missing = [slug for slug in slugs if slug not in found]
        if missing:
            raise SegmentRuleInvalid(path, f"no list with slug {', '.join(repr(s) for s in missing)}.")
        member = Exists(
            Subscription.objects.filter(
                subscriber=OuterRef("pk"), status=Subscription.Status.ACTIVE, mailing_list_id__in=list(found.values())
            )
        )
        return Q(member) if op == "in" else ~Q(member)

    def _attribute(self, op: str, value: Any, key: str, path: str) -> Q:
        if op == "exists":
            if not isinstance(value, bool):
                raise SegmentRuleInvalid(path, f"exists takes true or false, found {_shown(value)}.")
            present = Q(attributes__has_key=key)
            return present if value else ~present
        text = KeyTextTransform(key, "attributes")
        if op in NUMBER_OPS:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)) or value == "":
                raise SegmentRuleInvalid(path, f"{op} takes a number or a text, found {_shown(value)}.")
            # A number compares numerically (an attribute that is not a number never matches); a text, as text
            # (ISO dates order correctly that way).
            operand = text if isinstance(value, str) else _AsNumber(text, output_field=FloatField())
            return _present(operand) & Q(_COMPARE[op](operand, value))
        many = op in {"in", "not_in"}
        values = [_attribute_text(item, path) for item in _list_of(value, path, many=many)]
        return _text(text, op, values if many else values[0], path)

    def _created(self, op: str, value: Any, key: str, path: str) -> Q:
        if op == "within_days":
            return Q(created_at__gte=self.now - timedelta(days=_days(value, path)))
        moment = _moment(value, path)
        return Q(created_at__lt=moment) if op == "before" else Q(created_at__gte=moment)

    def _engaged(self, column: str, op: str, value: Any, path: str) -> Q:
        if op == "never":
            if value not in (None, True):
                raise SegmentRuleInvalid(path, "never takes no value.")
            return Q(**{f"{column}__isnull": True})
        since = self.now - timedelta(days=_days(value, path))
        recent = Q(**{f"{column}__gte": since})
        return recent if op == "within_days" else ~recent

    def _opened(self, op: str, value: Any, key: str, path: str) -> Q:
        return self._engaged("last_open_at", op, value, path)

    def _clicked(self, op: str, value: Any, key: str, path: str) -> Q:
        return self._engaged("last_click_at", op, value, path)

    def _score(self, op: str, value: Any, key: str, path: str) -> Q:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
            raise SegmentRuleInvalid(path, f"a score is a number from 0 to 100, found {_shown(value)}.")
        # Scores are shown rounded: "at least 50" includes 49.5, so compare against value - 0.5 (and so on).
        if op in {"gte", "gt"}:
            threshold = anchor_threshold(value - 0.5 if op == "gte" else value + 0.5, self.now)
            return Q() if threshold is None else Q(score_anchor__gte=threshold)
        threshold = anchor_threshold(value + 0.5 if op == "lte" else value - 0.5, self.now)
        return Q(pk__in=[]) if threshold is None else (Q(score_anchor__lt=threshold) | Q(score_anchor__isnull=True))

    def _sent(self, op: str, value: Any, key: str, path: str) -> Q:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SegmentRuleInvalid(path, f"expected a whole number, found {_shown(value)}.")
        return Q(**{f"sent_count__{op}": value})


class _Domain(Func):
    """The part of an address after the last '@' (addresses are stored lower-case)."""

    output_field = Subscriber._meta.get_field("email")

    def as_sql(self, compiler: Any, connection: Any, *args: Any, **extra: Any) -> Any:
        column, params = compiler.compile(self.source_expressions[0])
        if connection.vendor == "postgresql":
            return f"split_part({column}, '@', 2)", params
        return f"substr({column}, instr({column}, '@') + 1)", params


class _AsNumber(Func):
    """A JSON attribute as a number, or NULL when it is not one (a text never breaks the whole query)."""

    def as_sql(self, compiler: Any, connection: Any, *args: Any, **extra: Any) -> Any:
        text, params = compiler.compile(self.source_expressions[0])
        if connection.vendor == "postgresql":
            pattern = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
            return f"(CASE WHEN ({text}) ~ %s THEN ({text})::double precision END)", [*params, pattern, *params]
        return (
            f"(CASE WHEN trim({text}) <> '' AND trim({text}) NOT GLOB '*[^0-9.eE+-]*' THEN CAST({text} AS REAL) END)",
            [*params, *params, *params],
        )


def _fields() -> list[str]:
    return [name if name != "attribute" else "attribute.<key>" for name in FIELD_OPS]


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _list_of(value: Any, path: str, *, many: bool) -> list[Any]:
    if many:
        if not isinstance(value, list) or not value:
            raise SegmentRuleInvalid(path, f"expected a non-empty list, found {_shown(value)}.")
        return value
    return [value]


def _strings(value: Any, path: str, *, many: bool) -> list[str]:
    values = _list_of(value, path, many=many)
    for item in values:
        if not isinstance(item, str) or not item:
            raise SegmentRuleInvalid(path, f"expected text, found {_shown(item)}.")
    return values


def _attribute_text(value: Any, path: str) -> str:
    """How a JSON value reads as text in the database (imported attributes are text)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise SegmentRuleInvalid(path, f"expected text or a number, found {_shown(value)}.")


def _present(expression: Any) -> Q:
    """Guards a comparison on an expression that can be NULL (a missing attribute): the condition is then
    false, never unknown, so that `not` and `ne` include the subscribers who lack the attribute."""
    return Q(IsNull(expression, False))


def _text(expression: Any, op: str, value: Any, path: str) -> Q:
    """A case-insensitive text comparison."""
    if op in {"in", "not_in"}:
        values = [item.lower() for item in _strings(value, path, many=True)]
        matched = _present(expression) & Q(In(Lower(expression), values))
        return ~matched if op == "not_in" else matched
    (text,) = _strings(value, path, many=False)
    matched = _present(expression) & Q(_LOOKUP[op if op != "ne" else "eq"](expression, text))
    return ~matched if op == "ne" else matched


def _days(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 36500:
        raise SegmentRuleInvalid(path, f"expected a number of days from 1 to 36500, found {_shown(value)}.")
    return value


def _moment(value: Any, path: str) -> datetime:
    if isinstance(value, str):
        moment = parse_datetime(value)
        if moment is None:
            day = parse_date(value)
            if day is not None:
                moment = datetime(day.year, day.month, day.day, tzinfo=timezone.get_current_timezone())
        if moment is not None:
            return timezone.make_aware(moment) if timezone.is_naive(moment) else moment
    raise SegmentRuleInvalid(path, f"expected an ISO date such as 2026-01-31, found {_shown(value)}.")


def segment_rules_check(rules: Any) -> None:
    """Raise SegmentRuleInvalid, naming the rule, if `rules` is not a valid segment."""
    segment_filter(rules)


def segment_filter(rules: Any, *, now: datetime | None = None) -> Q:
    """The rule as one filter over Subscriber (lists are looked up now, so an unknown slug is reported)."""
    return _Compiler(now=now or timezone.now()).rule(rules, "rules", 0)


def segment_subscribers(rules: Any, *, now: datetime | None = None) -> QuerySet[Subscriber]:
    return Subscriber.objects.filter(segment_filter(rules, now=now))
