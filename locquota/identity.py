"""Who is calling: one security policy whose strategy (keystone, tokens, noauth) comes from the settings.

Views pass `request.identity.tenant_id` to services explicitly, so tenancy shows in every service signature.
"""

from dataclasses import dataclass
from urllib.parse import unquote

from pyramid.config import Configurator
from pyramid.request import Request, RequestLocalCache
from pyramid.security import Allowed, Denied

from locquota.clock import Clock
from locquota.settings import AuthStrategy
from locquota.tokens import TokenService

ADMIN_ROLE = "admin"
MAX_HEADER_CHARS = 255


@dataclass(frozen=True, slots=True)
class Identity:
    """A tenant (project) and the caller's roles in it."""

    tenant_id: str
    roles: frozenset[str]

    @property
    def is_admin(self) -> bool:
        """Whether the caller holds the admin role."""
        return ADMIN_ROLE in self.roles


def _roles(header: str) -> frozenset[str]:
    # glanceclient's identity_headers= percent-encodes values: "member,reader" arrives as "member%2Creader".
    return frozenset(role.strip().lower() for role in unquote(header).split(",") if role.strip())


def _project(header: str | None) -> str | None:
    if header is None:
        return None
    project = unquote(header).strip()
    if not project or len(project) > MAX_HEADER_CHARS or not project.isprintable():
        return None
    return project


def _from_keystone_headers(request: Request) -> Identity | None:
    """Trust keystonemiddleware's auth_token filter, which sits in front of the app and sets these headers."""
    if request.headers.get("X-Identity-Status", "").lower() != "confirmed":
        return None
    return _from_plain_headers(request)


def _from_plain_headers(request: Request) -> Identity | None:
    project = _project(request.headers.get("X-Project-Id") or request.headers.get("X-Tenant-Id"))
    if project is None:
        return None
    return Identity(project, _roles(request.headers.get("X-Roles", "")))


def _from_token(request: Request) -> Identity | None:
    token = request.headers.get("X-Auth-Token")
    if not token or len(token) > MAX_HEADER_CHARS:
        return None
    found = TokenService(request.db, request.find_service(Clock)).find(token)
    if found is None:
        return None
    return Identity(found.project_id, _roles(found.roles))


STRATEGIES = {
    AuthStrategy.KEYSTONE: _from_keystone_headers,
    AuthStrategy.TOKENS: _from_token,
    AuthStrategy.NOAUTH: _from_plain_headers,
}


class LocquotaSecurityPolicy:
    """Identity from the configured strategy; permission 'authenticated' for tenants, 'admin' for operators."""

    def __init__(self, strategy: AuthStrategy) -> None:
        # Pyramid asks for request.identity several times per request (permits, views, logging) and does
        # not cache it; a token lookup is a database query, so resolve once per request.
        self._identities = RequestLocalCache(STRATEGIES[strategy])

    def identity(self, request: Request) -> Identity | None:
        """Resolve the caller once per request."""
        return self._identities.get_or_create(request)

    def authenticated_userid(self, request: Request) -> str | None:
        """The tenant, for Pyramid's logging; locquota has no user accounts of its own."""
        identity = request.identity
        return identity.tenant_id if identity else None

    def permits(self, request: Request, _context: object, permission: str) -> Allowed | Denied:
        """Check the permission against the caller's roles."""
        identity = request.identity
        if identity is None:
            return Denied("no identity")
        if permission == "authenticated" or (permission == "admin" and identity.is_admin):
            return Allowed(f"{permission} granted")
        return Denied(f"{permission} needs the {ADMIN_ROLE} role")

    def remember(self, _request: Request, _userid: str, **_kw: object) -> list[tuple[str, str]]:
        """Identity travels in headers on every request; nothing to remember."""
        return []

    def forget(self, _request: Request, **_kw: object) -> list[tuple[str, str]]:
        """Nothing to forget."""
        return []


def includeme(config: Configurator) -> None:
    """The security policy for the configured strategy."""
    config.set_security_policy(LocquotaSecurityPolicy(config.registry["locquota.settings"].auth_strategy))
