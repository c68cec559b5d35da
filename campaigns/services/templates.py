from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction

from campaigns.models import Template
from delivery.exceptions import TemplateSyntaxInvalid


def _validated(template: Template) -> Template:
    try:
        template.full_clean()
    except ValidationError as exc:
        parts = [" ".join(messages) for messages in exc.message_dict.values()]
        raise TemplateSyntaxInvalid("; ".join(parts), exc.message_dict) from exc
    return template


@transaction.atomic
def template_create(*, name: str, subject: str, html: str = "", text: str = "") -> Template:
    """Create a template; one that does not compile is refused with the part and line at fault."""
    template = _validated(Template(name=name, subject=subject, html=html, text=text))
    template.save()
    return template


@transaction.atomic
def template_update(*, template: Template, **fields: str) -> Template:
    for name, value in fields.items():
        setattr(template, name, value)
    _validated(template).save()
    return template
