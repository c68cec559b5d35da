from core.exceptions import ApplicationError, NotFound


class UnsubscribeLinkInvalid(NotFound):
    code = "unsubscribe_link_invalid"


class SubscriberInvalid(ApplicationError):
    code = "subscriber_invalid"
