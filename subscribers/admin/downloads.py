"""One way the subscribers admin hands out CSV files."""

from __future__ import annotations

from collections.abc import Iterable

from django.http import StreamingHttpResponse
from django.utils import timezone
from django.utils.http import content_disposition_header


def csv_download(blocks: Iterable[str], stem: str) -> StreamingHttpResponse:
    """Streamed as the export produces it (memory stays flat whatever the number of rows), as `<stem>-<date>.csv`."""
    filename = f"{stem}-{timezone.now():%Y%m%d}.csv"
    return StreamingHttpResponse(
        blocks,
        content_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": content_disposition_header(as_attachment=True, filename=filename)},
    )
