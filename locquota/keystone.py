"""keystonemiddleware's auth_token, telling the app when Keystone itself could not be reached.

With delay_auth_decision (requests without a token reach the app, which serves version discovery and
/healthz to anyone, as Glance does), auth_token turns "Keystone is down" into "this token is invalid":
the app would answer 401 to every caller while Keystone is away. This filter is auth_token itself,
plus one mark in the environ when a token could not be checked because Keystone did not answer; the app
then answers a JSON 503 with Retry-After (locquota.identity). Use it as `use = egg:locquota#auth_token`.
"""

import threading
from collections.abc import Callable, Mapping
from typing import Any

from keystoneauth1 import exceptions as ksa_exceptions
from keystonemiddleware import auth_token
from keystonemiddleware.auth_token import _exceptions as ksm_exceptions

KEYSTONE_UNAVAILABLE = "locquota.keystone_unavailable"  # environ key: the token could not be checked
# What auth_token itself treats as "Keystone unavailable" (before turning it into an invalid token).
UNREACHABLE = (
    ksa_exceptions.ConnectFailure,
    ksa_exceptions.DiscoveryFailure,
    ksa_exceptions.RequestTimeout,
    ksm_exceptions.ServiceError,
)


class AuthToken(auth_token.AuthProtocol):
    """auth_token; a request whose token met an unreachable Keystone is marked, not just refused."""

    _unreachable = threading.local()  # per worker thread: set while one request's token is fetched

    def process_request(self, request: Any) -> Any:
        """auth_token's processing, then the mark if Keystone could not be asked."""
        self._unreachable.seen = False
        response = super().process_request(request)
        if self._unreachable.seen:
            request.environ[KEYSTONE_UNAVAILABLE] = True
        return response

    def fetch_token(self, token: str, **kwargs: Any) -> Any:
        """auth_token's fetch; with delay_auth_decision an unreachable Keystone comes back as InvalidToken."""
        try:
            return super().fetch_token(token, **kwargs)
        except ksm_exceptions.InvalidToken as exc:
            if isinstance(exc.__context__, UNREACHABLE):
                self._unreachable.seen = True
            raise


def filter_factory(global_conf: Mapping[str, str], **local_conf: str) -> Callable[[Any], AuthToken]:
    """The PasteDeploy filter factory (entry point `auth_token` of locquota), options as auth_token's."""
    conf = {**global_conf, **local_conf}
    return lambda app: AuthToken(app, conf)
