from core.exceptions import ApplicationError


class TemplateSyntaxInvalid(ApplicationError):
    code = "template_invalid"


class TemplateRenderFailed(ApplicationError):
    code = "template_render_failed"
