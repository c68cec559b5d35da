from core.exceptions import ApplicationError, NotFound


class UnsubscribeLinkInvalid(NotFound):
    code = "unsubscribe_link_invalid"


class SubscriberInvalid(ApplicationError):
    code = "subscriber_invalid"


class AddressErased(ApplicationError):
    """Its owner had the address erased: it is suppressed by hash and may not come back as a subscriber."""

    code = "address_erased"
    status_code = 409


class SubscriberNotFound(NotFound):
    code = "subscriber_not_found"


class OptinLinkInvalid(NotFound):
    code = "optin_link_invalid"


class OptinLinkExpired(ApplicationError):
    code = "optin_link_expired"
    status_code = 410


class OptinRefused(ApplicationError):
    """The link is genuine, but the subscription cannot be confirmed (suppressed address, or it was ended)."""

    code = "optin_refused"
    status_code = 409


class PreferencesLinkInvalid(NotFound):
    code = "preferences_link_invalid"
