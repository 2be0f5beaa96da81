"""Who is calling: one security policy whose strategy (keystone, tokens, noauth) comes from the settings.

Views pass `request.identity` to services explicitly, so tenancy shows in every service signature, and
the caller carries the policy: `caller.authorize(rule, target)` asks oslo.policy (locquota.authorization)
with Glance's rule names, never role names.

- keystone: keystonemiddleware's auth_token filter validates the token in front of the app and leaves
  what it found in the WSGI environ (`keystone.token_auth`), where no client can put anything: identity
  comes from there, never from headers a client could send. Without that key there is no identity.
- tokens: `locquota tokens create` tokens, looked up by hash.
- noauth: headers as keystonemiddleware would set them, for development and tests only.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from pyramid.config import Configurator
from pyramid.request import Request, RequestLocalCache
from pyramid.security import Allowed, Denied

from locquota.authorization import Policy
from locquota.clock import Clock
from locquota.errors import Forbidden, KeystoneUnavailable
from locquota.keystone import KEYSTONE_UNAVAILABLE
from locquota.settings import AuthStrategy
from locquota.tokens import TokenService

MAX_HEADER_CHARS = 255
AUTHENTICATED = "authenticated"  # Pyramid's default permission: a project-scoped caller
TOKEN_AUTH_ENVIRON_KEY = "keystone.token_auth"  # noqa: S105 - set by keystonemiddleware.auth_token, not a secret


class RuleDenied(Denied):
    """A refusal by one policy rule, named so that the 403 can say which (docs/errors.md: details.rule)."""

    rule: str

    def __new__(cls, rule: str) -> "RuleDenied":
        """Pyramid's results are ints, made in __new__."""
        denied = super().__new__(cls, "policy does not allow %s", rule)
        denied.rule = rule
        return denied


@dataclass(frozen=True, slots=True)
class Identity:
    """The caller: its project (None for a system- or domain-scoped token), roles, and the policy in force."""

    tenant_id: str | None
    roles: frozenset[str]
    policy: Policy = field(repr=False, compare=False)
    user_id: str | None = None
    system_scope: str | None = None
    domain_id: str | None = None

    @property
    def credentials(self) -> dict[str, Any]:
        """What oslo.policy checks rules against."""
        return {
            "project_id": self.tenant_id,
            "roles": sorted(self.roles),
            "user_id": self.user_id,
            "system_scope": self.system_scope,
            "domain_id": self.domain_id,
        }

    def may(self, rule: str, target: Mapping[str, object] | None = None) -> bool:
        """Whether the policy lets the caller do rule to target (by default: its own project)."""
        return self.policy.allows(rule, {"project_id": self.tenant_id, **(target or {})}, self.credentials)

    def authorize(self, rule: str, target: Mapping[str, object] | None = None) -> None:
        """403 unless the policy lets the caller do rule to target."""
        if not self.may(rule, target):
            raise Forbidden(f"Policy does not allow {rule} to be performed.", rule=rule)

    @property
    def is_admin(self) -> bool:
        """Glance's is_admin: the context_is_admin rule (role admin, by default)."""
        return self.may("context_is_admin")


# Keystone's default implied roles (keystone-manage bootstrap): a token carries the roles its roles imply.
# Tokens that do not come from Keystone (the tokens and noauth strategies) are expanded the same way, so a
# policy reads the same whichever strategy issued the roles.
IMPLIED_ROLES = {"admin": ("member", "manager"), "manager": ("member",), "member": ("reader",)}


def with_implied_roles(roles: set[str]) -> frozenset[str]:
    """The roles and every role they imply."""
    expanded, pending = set(roles), list(roles)
    while pending:
        for implied in IMPLIED_ROLES.get(pending.pop(), ()):
            if implied not in expanded:
                expanded.add(implied)
                pending.append(implied)
    return frozenset(expanded)


def _roles(header: str) -> frozenset[str]:
    # glanceclient's identity_headers= percent-encodes values: "member,reader" arrives as "member%2Creader".
    return with_implied_roles({role.strip().lower() for role in unquote(header).split(",") if role.strip()})


def _project(header: str | None) -> str | None:
    if header is None:
        return None
    project = unquote(header).strip()
    if not project or len(project) > MAX_HEADER_CHARS or not project.isprintable():
        return None
    return project


def _from_keystone(request: Request, policy: Policy) -> Identity | None:
    """What auth_token validated, from the environ; a token it refused (or none) is no identity."""
    if request.environ.get(KEYSTONE_UNAVAILABLE):
        raise KeystoneUnavailable("Keystone cannot be reached to check the token; try again later.")
    token_auth = request.environ.get(TOKEN_AUTH_ENVIRON_KEY)
    if token_auth is None or not token_auth.has_user_token:
        return None  # no auth_token in front, or no token: headers are never trusted
    if request.environ.get("HTTP_X_IDENTITY_STATUS", "").lower() != "confirmed":
        return None  # auth_token set this header itself, after removing the client's
    user = token_auth.user  # keystoneauth1's AccessInfo of the validated token
    return Identity(
        user.project_id,
        frozenset(role.lower() for role in user.role_names or ()),
        policy,
        user_id=user.user_id,
        system_scope="all" if user.system_scoped else None,
        domain_id=user.domain_id if not user.project_id else None,
    )


def _from_plain_headers(request: Request, policy: Policy) -> Identity | None:
    project = _project(request.headers.get("X-Project-Id") or request.headers.get("X-Tenant-Id"))
    if project is None:
        return None
    return Identity(project, _roles(request.headers.get("X-Roles", "")), policy)


def _from_token(request: Request, policy: Policy) -> Identity | None:
    token = request.headers.get("X-Auth-Token")
    if not token or len(token) > MAX_HEADER_CHARS:
        return None
    found = TokenService(request.db, request.find_service(Clock)).find(token)
    if found is None:
        return None
    return Identity(found.project_id, _roles(found.roles), policy)


STRATEGIES = {
    AuthStrategy.KEYSTONE: _from_keystone,
    AuthStrategy.TOKENS: _from_token,
    AuthStrategy.NOAUTH: _from_plain_headers,
}


class LocquotaSecurityPolicy:
    """Identity from the configured strategy; permission 'authenticated' for tenants, 'admin' for operators."""

    def __init__(self, strategy: AuthStrategy, policy: Policy) -> None:
        # Pyramid asks for request.identity several times per request (permits, views, logging) and does
        # not cache it; a token lookup is a database query, so resolve once per request.
        resolve = STRATEGIES[strategy]
        self._identities = RequestLocalCache(lambda request: resolve(request, policy))

    def identity(self, request: Request) -> Identity | None:
        """Resolve the caller once per request."""
        return self._identities.get_or_create(request)

    def authenticated_userid(self, request: Request) -> str | None:
        """The tenant, for Pyramid's logging; locquota has no user accounts of its own."""
        identity = request.identity
        return identity.tenant_id if identity else None

    def permits(self, request: Request, _context: object, permission: str) -> Allowed | Denied:
        """`authenticated`: a project-scoped caller. Any other permission is a policy rule on the caller's project."""
        identity = request.identity
        if identity is None:
            return Denied("no identity")
        if identity.tenant_id is None:
            return Denied("a project-scoped token is required")  # as Glance's project-scoped rules answer
        if permission == AUTHENTICATED or identity.may(permission):
            return Allowed(f"{permission} granted")
        return RuleDenied(permission)

    def remember(self, _request: Request, _userid: str, **_kw: object) -> list[tuple[str, str]]:
        """Identity travels in headers on every request; nothing to remember."""
        return []

    def forget(self, _request: Request, **_kw: object) -> list[tuple[str, str]]:
        """Nothing to forget."""
        return []


def includeme(config: Configurator) -> None:
    """The policy in force (refusing to start on a bad policy file) and the security policy for the strategy."""
    settings = config.registry["locquota.settings"]
    policy = Policy(settings.policy_file)
    config.registry["locquota.policy"] = policy
    config.set_security_policy(LocquotaSecurityPolicy(settings.auth_strategy, policy))
