"""Hostile input to the quota API: every row gets a clear 4xx with a stable code, never a 500, and changes nothing.

The endpoints are Glance's `GET /v2/info/usage` and locquota's `GET /v1/usage`, `GET /v1/tenants/{tenant}/usage` and
`GET/PUT /v1/tenants/{tenant}/limits` (SPEC sections 3 and 5). "Nothing changed" means every tenant's limit
overrides (rows, and their `updated_at`) and the usage of tenant-a and tenant-b are as they were.

Each table is one test that sends all its rows to one app and names every row that went wrong, so a few hundred
rows run on both databases in seconds (an app and its database per row would take minutes). Every row still
asserts its status, its error code and the unchanged state, and the failure lists each wrong row with its answer.
Control rows (the same request shapes, valid) show each table can fail.
"""

import io
import json
from collections.abc import Callable, Mapping

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from webtest import TestApp, TestRequest, TestResponse

from locquota.clock import FrozenClock
from locquota.settings import MAX_LIMIT
from quota.models import TenantLimit
from tests.conftest import identity

MAX_BODY_BYTES = 65536
RESOURCES = (
    "image_size_total",
    "image_count_total",
    "image_count_uploading",
    "image_stage_total",
    "locations_per_image",
)
TENANT_A_OVERRIDES = {"image_size_total": 100, "image_count_total": 7}
TENANT_B_OVERRIDES = {"locations_per_image": 3}
LIMITS_A = "/v1/tenants/tenant-a/limits"
USAGE_A = "/v1/tenants/tenant-a/usage"
ADMIN = identity("operators", "admin")
TENANT_A = identity("tenant-a")
TENANT_B = identity("tenant-b")

State = dict[str, object]
Send = Callable[[TestApp], TestResponse]
Refusal = tuple[Send, int, str]  # how to send the row, the status and the error code it must get


# --- helpers -------------------------------------------------------------------------------------------------------


@pytest.fixture
def seeded(app: TestApp, admin, new_image, upload, clock: FrozenClock) -> None:
    """tenant-a holds one active 4-byte image and two overrides; tenant-b one override; then time moves on.

    Moving the clock means a request that rewrote the same overrides would still show, in `updated_at`.
    """
    upload(new_image(disk_format="raw")["id"], b"data")
    app.put_json(LIMITS_A, {"limits": TENANT_A_OVERRIDES}, headers=admin, status=200)
    app.put_json("/v1/tenants/tenant-b/limits", {"limits": TENANT_B_OVERRIDES}, headers=admin, status=200)
    clock.advance(hours=1)


@pytest.fixture
def state(seeded: None, db: Session, usage_of: Callable[[str], dict[str, object]]) -> Callable[[], State]:
    """Every tenant's limit overrides as stored, and the usage of tenant-a and tenant-b."""

    def take() -> State:
        columns = (TenantLimit.tenant_id, TenantLimit.resource, TenantLimit.value, TenantLimit.updated_at)
        overrides = [tuple(row) for row in db.execute(select(*columns).order_by(*columns[:2]))]
        db.rollback()  # never keep a snapshot open across the app's own transactions
        return {"overrides": overrides, "usage": {t: usage_of(t) for t in ("tenant-a", "tenant-b")}}

    return take


def overrides_in_db(db: Session, tenant_id: str) -> dict[str, int]:
    rows = db.execute(select(TenantLimit.resource, TenantLimit.value).where(TenantLimit.tenant_id == tenant_id)).all()
    db.rollback()
    return dict(rows)  # type: ignore[arg-type]


def error_problem(res: TestResponse, status: int, code: str) -> str | None:
    """What is wrong with an error answer (status, code, the one-key shape), or None."""
    answer = f"{res.status} {res.text[:300]}"
    if res.status_int != status or res.content_type != "application/json":
        return answer
    document = res.json
    if set(document) != {"error"} or document["error"].get("code") != code:
        return answer
    if not isinstance(document["error"].get("message"), str):
        return answer
    return None


def assert_refused(app: TestApp, state: Callable[[], State], rows: Mapping[str, Refusal]) -> None:
    """Send every row; fail naming each row that did not get its status and code, or that changed limits or usage."""
    wrong = {}
    before = state()
    for name, (send, status, code) in rows.items():
        problem = error_problem(send(app), status, code)
        after = state()
        if problem is None and after != before:
            problem = f"changed the state: {before} -> {after}"
        if problem is not None:
            wrong[name] = problem
        before = after  # so a row that changed something does not make every later row fail too
    assert not wrong, f"{len(wrong)} of {len(rows)} rows wrong:\n" + "\n".join(f"{k}: {v}" for k, v in wrong.items())


def request(app: TestApp, method: str, path: str, headers: Mapping[str, str], body: bytes = b"") -> TestResponse:
    sent = {**headers, "Content-Type": "application/json"}
    return app.request(path, method=method, headers=sent, body=body, expect_errors=True)


def call(method: str, path: str, headers: Mapping[str, str], body: bytes = b"") -> Send:
    return lambda app: request(app, method, path, headers, body)


def raw_put(
    app: TestApp, path: str, headers: Mapping[str, str], body: bytes, *, chunked: bool = False, length: str = ""
) -> TestResponse:
    """A PUT whose body stream is not seekable, sent chunked (no Content-Length) or with a lying Content-Length."""
    req = TestRequest.blank(path, method="PUT", headers={**headers, "Content-Type": "application/json"})
    req.environ["wsgi.input"] = io.BytesIO(body)
    req.environ.pop("webob.is_body_seekable", None)
    if chunked:
        req.environ.pop("CONTENT_LENGTH", None)
        req.environ["HTTP_TRANSFER_ENCODING"] = "chunked"
        req.environ["wsgi.input_terminated"] = True
    else:
        req.environ["CONTENT_LENGTH"] = length or str(len(body))
    return app.do_request(req, expect_errors=True)


def limits_doc(**limits: object) -> bytes:
    return json.dumps({"limits": limits}).encode()


def padded_limits(size: int) -> bytes:
    """A valid limits document of exactly `size` bytes (whitespace padding, which JSON ignores)."""
    document = limits_doc(image_count_total=3)
    return document[:-1] + b" " * (size - len(document)) + b"}"


# --- PUT /v1/tenants/{tenant}/limits: the body ---------------------------------------------------------------------

MALFORMED_JSON = {
    "empty": b"",
    "whitespace-only": b" \n\t ",
    "truncated": b'{"limits": {"image_count_total": 5}',
    "missing-value": b'{"limits": {"image_count_total": }}',
    "trailing-garbage": b'{"limits": {}} {}',
    "trailing-comma": b'{"limits": {"image_count_total": 5,}}',
    "single-quotes": b"{'limits': {}}",
    "bare-word": b"limits",
    "invalid-utf8": b'{"limits": {"\xff\xfe": 1}}',
    "hex-number": b'{"limits": {"image_count_total": 0x10}}',
    "leading-plus": b'{"limits": {"image_count_total": +5}}',
    "leading-zero": b'{"limits": {"image_count_total": 05}}',
    "deep-nested-array": b"[" * 60000,
    "deep-nested-object": b'{"limits":' * 6000,
}


def test_put_limits_rejects_malformed_json(app, state):
    rows = {name: (call("PUT", LIMITS_A, ADMIN, body), 400, "malformed_json") for name, body in MALFORMED_JSON.items()}
    assert_refused(app, state, rows)


INVALID_LIMITS = {
    # the body is JSON but not an object
    "body-array": b"[]",
    "body-array-of-limits": b'[{"limits": {}}]',
    "body-string": b'"limits"',
    "body-number": b"1",
    "body-null": b"null",
    "body-true": b"true",
    # the document's shape
    "limits-missing": b"{}",
    "limits-misspelt": b'{"limit": {"image_count_total": 5}}',
    "limits-capitalised": b'{"Limits": {"image_count_total": 5}}',
    "limits-null": b'{"limits": null}',
    "limits-array": b'{"limits": []}',
    "limits-array-of-pairs": b'{"limits": [["image_count_total", 5]]}',
    "limits-string": b'{"limits": "image_count_total=5"}',
    "limits-number": b'{"limits": 5}',
    "limits-true": b'{"limits": true}',
    "extra-top-level-key": b'{"limits": {}, "tenant_id": "tenant-b"}',
    "extra-top-level-key-first": b'{"overrides": {"image_count_total": 5}, "limits": {"image_count_total": 5}}',
    "duplicate-limits-last-wins-invalid": b'{"limits": {"image_count_total": 5}, "limits": []}',
    # unknown resources
    "resource-unknown": limits_doc(images=5),
    "resource-uppercase": limits_doc(IMAGE_COUNT_TOTAL=5),
    "resource-trailing-space": limits_doc(**{"image_count_total ": 5}),
    "resource-empty-name": limits_doc(**{"": 5}),
    "resource-glance-legacy-name": limits_doc(user_storage_quota=5),
    "resource-unknown-null": limits_doc(images=None),
    "resource-unknown-next-to-valid": limits_doc(image_count_total=5, image_size=10),
    # below -1
    "negative-2": limits_doc(image_count_total=-2),
    "negative-size": limits_doc(image_size_total=-100),
    "negative-int64-min": limits_doc(locations_per_image=-(2**63)),
    "negative-float": limits_doc(image_count_total=-1.5),
    # above MAX_LIMIT (2**43 - 1)
    "two-to-the-43": limits_doc(image_size_total=2**43),
    "max-plus-one": limits_doc(image_size_total=MAX_LIMIT + 1),
    "max-plus-one-count": limits_doc(image_count_total=MAX_LIMIT + 1),
    "int64-max": limits_doc(image_stage_total=2**63 - 1),
    "int64-overflow": limits_doc(image_size_total=2**63),
    "uint64-overflow": limits_doc(image_count_uploading=2**64),
    "ten-to-the-30": limits_doc(image_size_total=10**30),
    "huge-exponent": b'{"limits": {"image_size_total": 1e30}}',
    "float-overflow-inf": b'{"limits": {"image_size_total": 1e400}}',
    "nan": b'{"limits": {"image_count_total": NaN}}',
    "infinity": b'{"limits": {"image_count_total": Infinity}}',
    "minus-infinity": b'{"limits": {"image_count_total": -Infinity}}',
    # not integers
    "float": limits_doc(image_count_total=1.5),
    "float-tiny": limits_doc(image_count_total=1e-9),
    "string-number": limits_doc(image_count_total="10"),
    "string-minus-one": limits_doc(image_count_total="-1"),
    "string-unlimited": limits_doc(image_count_total="unlimited"),
    "string-empty": limits_doc(image_count_total=""),
    "true": limits_doc(image_count_total=True),
    "false": limits_doc(image_count_total=False),
    "array": limits_doc(image_count_total=[]),
    "array-of-int": limits_doc(image_count_total=[5]),
    "object": limits_doc(image_count_total={}),
    "object-with-value": limits_doc(image_count_total={"value": 5}),
    # one bad value refuses the whole document, valid ones beside it included
    "valid-next-to-invalid": limits_doc(image_size_total=1, image_count_total=2, locations_per_image=-2),
    "duplicate-key-last-wins-invalid": b'{"limits": {"image_count_total": 5, "image_count_total": -5}}',
    # text neither database can store: NUL and lone surrogates, in keys and values
    "nul-in-resource-key": b'{"limits": {"image_count_total\\u0000": 5}}',
    "nul-only-resource-key": b'{"limits": {"\\u0000": 5}}',
    "nul-in-top-level-key": b'{"limits": {}, "\\u0000": 1}',
    "nul-in-limits-key": b'{"limits\\u0000": {}}',
    "lone-surrogate-resource-key": b'{"limits": {"\\ud800": 5}}',
    "lone-low-surrogate-resource-key": b'{"limits": {"image_count_total\\udfff": 5}}',
    "lone-surrogate-top-level-key": b'{"limits": {}, "\\udbff": 1}',
    "nul-in-value": b'{"limits": {"image_count_total": "5\\u0000"}}',
    "lone-surrogate-in-value": b'{"limits": {"image_count_total": "\\ud800"}}',
}


def test_put_limits_rejects_an_invalid_document(app, state):
    rows = {name: (call("PUT", LIMITS_A, ADMIN, body), 400, "invalid_body") for name, body in INVALID_LIMITS.items()}
    assert_refused(app, state, rows)


def sent_raw(body: bytes, *, chunked: bool = False, length: str = "") -> Send:
    return lambda app: raw_put(app, LIMITS_A, ADMIN, body, chunked=chunked, length=length)


TOO_LARGE = "request_too_large"
UNREADABLE_BODIES: dict[str, Refusal] = {
    "one-byte-over": (sent_raw(padded_limits(MAX_BODY_BYTES + 1)), 413, TOO_LARGE),
    "one-byte-over-chunked": (sent_raw(padded_limits(MAX_BODY_BYTES + 1), chunked=True), 413, TOO_LARGE),
    "one-megabyte": (sent_raw(padded_limits(1_000_000)), 413, TOO_LARGE),
    "one-megabyte-chunked": (sent_raw(padded_limits(1_000_000), chunked=True), 413, TOO_LARGE),
    "deep-nesting-over-the-limit": (sent_raw(b"[" * 100_000), 413, TOO_LARGE),
    "announced-terabyte": (sent_raw(limits_doc(), length=str(10**12)), 413, TOO_LARGE),
    "shorter-than-content-length": (sent_raw(limits_doc(image_count_total=3), length="500"), 400, "incomplete_body"),
}


def test_put_limits_refuses_a_body_it_will_not_read_whole(app, state):
    assert_refused(app, state, UNREADABLE_BODIES)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_put_limits_body_at_the_size_limit_is_accepted(app, state, db, chunked):
    """The control row for the 413s: exactly max_request_body_bytes is applied."""
    body = padded_limits(MAX_BODY_BYTES)
    assert len(body) == MAX_BODY_BYTES
    res = raw_put(app, LIMITS_A, ADMIN, body, chunked=chunked)
    assert res.status_int == 200, res.text[:2000]
    assert overrides_in_db(db, "tenant-a") == {"image_count_total": 3}


# --- PUT: the control rows (the same request shapes succeed when valid) -------------------------------------------

EVERY_RESOURCE = {
    "image_size_total": 10,
    "image_count_total": 2,
    "image_count_uploading": 1,
    "image_stage_total": 0,
    "locations_per_image": 4,
}
VALID_LIMITS = {
    # (the limits document, the tenant's overrides afterwards)
    "every-resource": (EVERY_RESOURCE, EVERY_RESOURCE),
    "unlimited": ({"image_count_total": -1}, {"image_count_total": -1}),
    "zero": ({"image_size_total": 0}, {"image_size_total": 0}),
    "largest-count": ({"image_count_total": MAX_LIMIT}, {"image_count_total": MAX_LIMIT}),
    "largest-size": ({"image_size_total": MAX_LIMIT}, {"image_size_total": MAX_LIMIT}),
    "null-is-the-default": ({"image_size_total": None, "image_count_total": 9}, {"image_count_total": 9}),
    "absent-is-the-default": ({"locations_per_image": 2}, {"locations_per_image": 2}),
    "empty-clears-every-override": ({}, {}),
    "all-null-clears-every-override": (dict.fromkeys(RESOURCES), {}),
}


def test_put_limits_with_a_valid_document_replaces_the_overrides(app, state, db):
    """Each row replaces the whole set of overrides, so the rows are independent of one another."""
    usage_before = state()["usage"]
    tenant_b_before = overrides_in_db(db, "tenant-b")
    for name, (limits, expected) in VALID_LIMITS.items():
        res = request(app, "PUT", LIMITS_A, ADMIN, json.dumps({"limits": limits}).encode())
        assert res.status_int == 200, (name, res.text[:2000])
        assert res.json["overrides"] == expected, name
        assert overrides_in_db(db, "tenant-a") == expected, name
        shown = app.get(LIMITS_A, headers=ADMIN, status=200).json
        assert (shown["overrides"], shown["limits"]) == (expected, {**shown["defaults"], **expected}), name
        glance = app.get("/v2/info/usage", headers=TENANT_A, status=200).json["usage"]
        assert {r: glance[r]["limit"] for r in glance} == {r: shown["limits"][r] for r in glance}, name
    assert state()["usage"] == usage_before  # limits never move usage
    assert overrides_in_db(db, "tenant-b") == tenant_b_before  # nor another tenant's limits


def test_largest_size_limit_still_admits_an_upload(app, admin, new_image, upload, usage_of):
    """PUT accepts MAX_LIMIT MiB, so admission under it must work too (in bytes, just under 2**63)."""
    app.put_json(LIMITS_A, {"limits": {"image_size_total": MAX_LIMIT}}, headers=admin, status=200)
    image = new_image(disk_format="raw")
    res = upload(image["id"], b"x" * 10, status="*")
    assert res.status_int == 204, res.text[:2000]
    assert usage_of("tenant-a")["totals"]["image_size_total"] == 10


# --- tenant ids in the path ----------------------------------------------------------------------------------------

TENANT_ROUTES = {
    "get-limits": ("GET", "/v1/tenants/{t}/limits", b""),
    "put-limits": ("PUT", "/v1/tenants/{t}/limits", limits_doc(image_count_total=1)),
    "get-usage": ("GET", "/v1/tenants/{t}/usage", b""),
}

BAD_TENANT_IDS = {
    # (the path segment, percent-encoded as sent; status; code)
    "256-chars": ("t" * 256, 400, "invalid_tenant_id"),
    "256-chars-multibyte": ("%E4%B8%AD" * 256, 400, "invalid_tenant_id"),
    "nul": ("%00", 400, "invalid_tenant_id"),
    "nul-inside": ("tenant-a%00", 400, "invalid_tenant_id"),
    "newline": ("tenant-a%0A", 400, "invalid_tenant_id"),
    "carriage-return": ("a%0Db", 400, "invalid_tenant_id"),
    "tab": ("a%09b", 400, "invalid_tenant_id"),
    "escape": ("%1B%5B31m", 400, "invalid_tenant_id"),
    "delete-char": ("%7F", 400, "invalid_tenant_id"),
    "c1-control": ("%C2%85", 400, "invalid_tenant_id"),
    "no-break-space": ("%C2%A0", 400, "invalid_tenant_id"),
    "zero-width-space": ("tenant%E2%80%8B-a", 400, "invalid_tenant_id"),
    "bidi-override": ("%E2%80%AEa-tnanet", 400, "invalid_tenant_id"),
    "noncharacter": ("%EF%BF%BF", 400, "invalid_tenant_id"),
    # whitespace: no caller can ever be this tenant (identity strips X-Project-Id and refuses a blank one)
    "blank": ("%20", 400, "invalid_tenant_id"),
    "leading-space": ("%20tenant-a", 400, "invalid_tenant_id"),
    "trailing-space": ("tenant-a%20", 400, "invalid_tenant_id"),
    # not UTF-8: names no resource
    "invalid-utf8-ff": ("%ff", 404, "not_found"),
    "invalid-utf8-fe-ff": ("tenant%fe%ff", 404, "not_found"),
    "overlong-nul": ("%C0%80", 404, "not_found"),
    "encoded-surrogate": ("%ED%A0%80", 404, "not_found"),
    "truncated-sequence": ("%E4%B8", 404, "not_found"),
    # a slash splits the segment, and nothing is left: other URLs, which do not exist
    "encoded-slash": ("tenant-a%2Fb", 404, "not_found"),
    "empty": ("", 404, "not_found"),
}


def test_bad_tenant_id_in_the_path_is_refused(app, state):
    rows = {
        f"{route} {name}": (call(method, template.format(t=segment), ADMIN, body), status, code)
        for name, (segment, status, code) in BAD_TENANT_IDS.items()
        for route, (method, template, body) in TENANT_ROUTES.items()
    }
    assert_refused(app, state, rows)


GOOD_TENANT_IDS = {
    "255-chars": "t" * 255,
    "255-chars-multibyte": "%E4%B8%AD" * 255,
    "keystone-hex": "8f0c5e2b9d6a4f1e8c3b7a2d5e9f0c1a",
    "unicode": "t%C3%A9nant-%E4%B8%AD",
    "punctuation": "a.b_c-d~e",
}


def test_odd_but_valid_tenant_id_gets_its_own_limits(app, state, db):
    """The control rows for the tenant ids: the same routes answer, for that tenant and no other."""
    before = state()
    for name, segment in GOOD_TENANT_IDS.items():
        res = request(app, "PUT", f"/v1/tenants/{segment}/limits", ADMIN, limits_doc(image_count_total=1))
        assert res.status_int == 200, (name, res.text[:2000])
        tenant_id = res.json["tenant_id"]
        assert overrides_in_db(db, tenant_id) == {"image_count_total": 1}, name
        assert app.get(f"/v1/tenants/{segment}/limits", headers=ADMIN, status=200).json["tenant_id"] == tenant_id
        usage = app.get(f"/v1/tenants/{segment}/usage", headers=ADMIN, status=200).json
        assert (usage["tenant_id"], usage["resources"]["image_count_total"]["limit"]) == (tenant_id, 1), name
    after = state()
    assert after["usage"] == before["usage"]
    assert [row for row in after["overrides"] if row[0] in ("tenant-a", "tenant-b")] == before["overrides"]


# --- identity and roles --------------------------------------------------------------------------------------------

ALL_ROUTES = {
    "glance-usage": ("GET", "/v2/info/usage", b""),
    "own-usage": ("GET", "/v1/usage", b""),
    "tenant-usage": ("GET", USAGE_A, b""),
    "get-limits": ("GET", LIMITS_A, b""),
    "put-limits": ("PUT", LIMITS_A, limits_doc(image_count_total=1)),
    "put-limits-garbage": ("PUT", LIMITS_A, b"{not json"),
    "put-limits-bad-tenant": ("PUT", "/v1/tenants/%00/limits", limits_doc()),
}
ADMIN_ROUTES = {name: route for name, route in ALL_ROUTES.items() if route[1].startswith("/v1/tenants/")}

NOT_AUTHENTICATED = {
    "no-headers": {},
    "identity-invalid": {"X-Identity-Status": "Invalid", "X-Project-Id": "operators", "X-Roles": "admin"},
    "identity-status-missing": {"X-Project-Id": "operators", "X-Roles": "admin"},
    "confirmed-without-project": {"X-Identity-Status": "Confirmed", "X-Roles": "admin"},
    "confirmed-blank-project": {"X-Identity-Status": "Confirmed", "X-Project-Id": " ", "X-Roles": "admin"},
    "confirmed-project-nul": {"X-Identity-Status": "Confirmed", "X-Project-Id": "a%00b", "X-Roles": "admin"},
    "confirmed-project-too-long": {"X-Identity-Status": "Confirmed", "X-Project-Id": "p" * 256, "X-Roles": "admin"},
    "token-only": {"X-Auth-Token": "whatever"},
    "forged-confirmed-admin": {"X-Identity-Status": "Confirmed", "X-Project-Id": "operators", "X-Roles": "admin"},
}


@pytest.fixture
def keystone_app(settings, make_app):
    """The API under the keystone strategy with no auth_token in front: no header, however forged, is anyone."""
    return make_app({**settings, "locquota.auth_strategy": "keystone"})


def test_unauthenticated_request_is_401(keystone_app, state):
    rows = {
        f"{route} {name}": (call(method, path, headers, body), 401, "unauthorized")
        for name, headers in NOT_AUTHENTICATED.items()
        for route, (method, path, body) in ALL_ROUTES.items()
    }
    assert_refused(keystone_app, state, rows)
    assert request(keystone_app, "GET", "/v1/usage", {}).headers.get("WWW-Authenticate")


NOT_ADMIN = {
    "member-of-the-tenant": TENANT_A,
    "reader-of-the-tenant": identity("tenant-a", "reader"),
    "member-of-another-tenant": TENANT_B,
    "no-roles": {**TENANT_A, "X-Roles": ""},
    "role-administrator": identity("tenant-a", "administrator"),
    "role-admin-prefix": identity("tenant-a", "admin_"),
    "role-admin-substring": identity("tenant-a", "notadmin"),
    "role-admin-glued": {**TENANT_A, "X-Roles": "member admin"},
    "role-admin-nul": {**TENANT_A, "X-Roles": "admin%00"},
    "admin-in-another-header": {**TENANT_A, "X-Service-Roles": "admin", "X-Role": "admin"},
}


def test_admin_endpoint_without_the_admin_role_is_forbidden(app, state):
    rows = {
        f"{route} {name}": (call(method, path, headers, body), 403, "forbidden")
        for name, headers in NOT_ADMIN.items()
        for route, (method, path, body) in ADMIN_ROUTES.items()
    }
    assert_refused(app, state, rows)


def test_another_tenant_cannot_read_someones_usage(app, state):
    paths = [USAGE_A, USAGE_A + "?tenant_id=tenant-b", USAGE_A + "?all_tenants=1"]
    rows = {path: (call("GET", path, TENANT_B), 403, "forbidden") for path in paths}
    assert_refused(app, state, rows)
    assert "tenant-a" not in request(app, "GET", USAGE_A, TENANT_B).text


ADMIN_SPELLINGS = {
    "admin": ADMIN,
    "capitalised": identity("operators", "Admin"),
    "among-others": identity("operators", "member", "admin", "reader"),
    "percent-encoded-list": {**ADMIN, "X-Roles": "member%2Cadmin"},
    "padded": {**ADMIN, "X-Roles": " admin , member"},
}


def test_admin_endpoints_answer_an_admin(app, state, db):
    """The control rows for the 403s: each spelling of the admin role reaches all three admin routes."""
    before = state()
    for count, (name, headers) in enumerate(ADMIN_SPELLINGS.items(), start=1):
        usage = app.get(USAGE_A, headers=headers, status=200).json
        assert usage["resources"]["image_count_total"]["usage"] == 1, name
        assert app.get(LIMITS_A, headers=headers, status=200).json["tenant_id"] == "tenant-a", name
        request(app, "PUT", LIMITS_A, headers, limits_doc(image_count_total=count))
        assert overrides_in_db(db, "tenant-a") == {"image_count_total": count}, name
    assert state()["usage"] == before["usage"]


# --- methods -------------------------------------------------------------------------------------------------------

WRONG_METHODS = [
    (method, path)
    for path in ("/v2/info/usage", "/v1/usage", USAGE_A, LIMITS_A)
    for method in ("POST", "DELETE", "PATCH", "OPTIONS")
] + [("PUT", "/v2/info/usage"), ("PUT", "/v1/usage"), ("PUT", USAGE_A)]


def test_wrong_method_is_405(app, state):
    rows = {
        f"{method} {path} as {who}": (
            call(method, path, headers, limits_doc(image_count_total=1)),
            405,
            "method_not_allowed",
        )
        for method, path in WRONG_METHODS
        for who, headers in (("admin", ADMIN), ("tenant-a", TENANT_A))
    }
    assert_refused(app, state, rows)


# --- query strings -------------------------------------------------------------------------------------------------

ODD_QUERIES = {
    "tenant-id": "tenant_id=tenant-b",
    "project-id": "project_id=tenant-b",
    "all-tenants": "all_tenants=1&all_projects=true",
    "repeated": "tenant_id=tenant-b&tenant_id=operators",
    "invalid-utf8": "%ff=%fe&a=%c3%28",
    "nul": "a=%00&%00=b",
    "control-chars": "a=%1B%5B2J&b=%0D%0A",
    "bad-escapes": "a=%zz&%=&b=%",
    "empty-parts": "=&&=&;&",
    "paging": "limit=-1&marker=%00&sort=,,:,",
    "many-params": "&".join(f"p{i}=v" for i in range(500)),
    "huge": "x=" + "y" * 100_000,
    "json": "%7B%22limits%22%3A%7B%7D%7D",
}
USAGE_ROUTES = {
    "glance-usage": ("/v2/info/usage", TENANT_A),
    "own-usage": ("/v1/usage", TENANT_A),
    "tenant-usage": (USAGE_A, ADMIN),
    "get-limits": (LIMITS_A, ADMIN),
}


def comparable(document: dict[str, object]) -> dict[str, object]:
    """A usage or limits document without its freshness (the first read is from the database, the next cached)."""
    return {key: value for key, value in document.items() if key != "freshness"}


def test_odd_query_string_is_ignored(app, state):
    """Query parameters mean nothing here: the answer is the caller's (or the path's) tenant's, as without one."""
    before = state()
    wrong = {}
    for route, (path, headers) in USAGE_ROUTES.items():
        plain = comparable(app.get(path, headers=headers, status=200).json)
        assert plain.get("tenant_id", "tenant-a") == "tenant-a"
        for name, query in ODD_QUERIES.items():
            res = app.get(f"{path}?{query}", headers=headers, expect_errors=True)
            if res.status_int != 200 or comparable(res.json) != plain:
                wrong[f"{route} {name}"] = f"{res.status} {res.text[:300]}"
    assert not wrong, "\n".join(f"{k}: {v}" for k, v in wrong.items())
    assert state() == before
