"""Checking CSV rows one by one: the columns, the address, the sizes. Used by the row-by-row import path
and, for the rows its SQL pattern does not accept, by the PostgreSQL COPY path."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from email_validator import EmailNotValidError, validate_email

from core.exceptions import ApplicationError

MAX_FIELD_BYTES = 65_536
MAX_NAME_CHARS = 200
MAX_EMAIL_CHARS = 254

# Most real addresses: lower-case ASCII, dot-atoms, a domain with a letters-only TLD. Anything else is
# decided by email-validator (~40k addresses/s), so this pattern only has to be exact, not complete.
_COMMON_ADDRESS = re.compile(
    r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}"
)


# The flat part of the same pattern for PostgreSQL (import_copy adds the dot, hyphen and length rules; the
# top-level domain's upper bound is the label length rule, as a bounded repeat makes PostgreSQL's regex 3x slower).
COMMON_ADDRESS_SQL = r"^[a-z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-z0-9.-]+\.[a-z][a-z]+$"
STAGE_TABLE = "mailer_import_rows"


class ImportFileInvalid(ApplicationError):
    code = "import_file_invalid"


@dataclass(frozen=True)
class Columns:
    email: int
    name: int | None
    attributes: list[tuple[int, str]]
    width: int


def columns_read(header: list[str], column_map: dict[str, str]) -> Columns:
    mapping = {k.strip().lower(): v.strip() for k, v in column_map.items()}
    names = []
    for position, raw_name in enumerate(header, start=1):
        name = raw_name.strip()
        name = mapping.get(name.lower(), name)
        if not name:
            raise ImportFileInvalid(f"Column {position} of the header has no name.")
        names.append(name)
    lowered = [n.lower() for n in names]
    for name in set(lowered):
        if lowered.count(name) > 1:
            raise ImportFileInvalid(f"The header names the column {name!r} twice.")
    if "email" not in lowered:
        found = ", ".join(repr(n) for n in names[:20])
        raise ImportFileInvalid(
            f"The file has no 'email' column (columns found: {found}). Rename the column, or map it, for "
            "example --map 'E-mail address=email'."
        )
    email = lowered.index("email")
    name_index = lowered.index("name") if "name" in lowered else None
    attributes = [(i, n) for i, n in enumerate(names) if i not in (email, name_index)]
    return Columns(email, name_index, attributes, len(names))


@dataclass(frozen=True)
class Row:
    line: int
    email: str
    name: str
    attributes: str  # JSON


def email_check(value: str, check_deliverability: bool) -> tuple[str, str]:
    """(normalized address, "") or ("", reason)."""
    address = value.strip().lower()
    if not address:
        return "", "the email is empty"
    if len(address) > MAX_EMAIL_CHARS:
        return "", f"the email is {len(address)} characters long, over {MAX_EMAIL_CHARS}"
    if not check_deliverability and _COMMON_ADDRESS.fullmatch(address):
        return address, ""
    try:
        result = validate_email(address, check_deliverability=check_deliverability)
    except EmailNotValidError as exc:
        return "", f"invalid email {value.strip()!r}: {exc}"
    return result.normalized.lower(), ""


def rows_checked(
    reader: Any, columns: Columns, check_deliverability: bool, reject: Callable[[int, str, str], None]
) -> Iterator[Row]:
    """Valid rows, in file order; every other row goes to `reject` with its line and the reason."""
    email_at, name_at, attrs, width = columns.email, columns.name, columns.attributes, columns.width
    check_dns = check_deliverability
    # Lines are counted by record, the header being line 1: the same numbering as the COPY path.
    line = 1
    for record in reader:
        line += 1
        if len(record) != width:
            if not any(v.strip() for v in record):
                continue  # a blank line
            reject(line, record[email_at] if len(record) > email_at else "",
                   f"the row has {len(record)} fields, the header has {width}")  # fmt: skip
            continue
        oversized = next((i for i, v in enumerate(record) if len(v) > MAX_FIELD_BYTES), None)
        if oversized is not None:
            size = len(record[oversized])
            reject(
                line, record[email_at][:100], f"field {oversized + 1} is {size:,} characters, over {MAX_FIELD_BYTES:,}"
            )
            continue
        email, problem = email_check(record[email_at], check_dns)
        if problem:
            reject(line, record[email_at], problem)
            continue
        name = record[name_at].strip() if name_at is not None else ""
        if len(name) > MAX_NAME_CHARS:
            reject(line, email, f"the name is {len(name)} characters long, over {MAX_NAME_CHARS}")
            continue
        attributes = {key: record[i] for i, key in attrs if record[i] != ""}
        yield Row(line, email, name, json.dumps(attributes, ensure_ascii=False) if attributes else "{}")
