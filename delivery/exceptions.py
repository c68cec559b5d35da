from core.exceptions import ApplicationError


class TemplateSyntaxInvalid(ApplicationError):
    code = "template_invalid"


class TemplateRenderFailed(ApplicationError):
    code = "template_render_failed"


class WarmingPlanInvalid(ApplicationError):
    code = "warming_plan_invalid"


class LimiterUnavailable(ApplicationError):
    """The shared store of rate limits, daily caps and circuits (Redis) cannot be reached: try again later.

    Nothing was reserved or recorded. The engine puts the work back in the queue; the next call reconnects.
    """

    code = "limiter_unavailable"
    status_code = 503
