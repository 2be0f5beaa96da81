"""`locquota import-glance` carries Glance's image_members over: a shared image keeps its members and their answers.

The Glance 33 fixtures hold no membership, so each test adds Glance rows to a copy (as test_import_glance makes
its hostile rows). Each import lands in both locquota databases the suite uses; what a member then sees is
asked of the API (GLANCE_COMPAT.md's sharing table). docs/import.md states the decisions tested here.
"""

# The SQL built with f-strings below writes a copy of a fixture, with this module's own constants.
# ruff: noqa: S608

import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing

import psycopg
import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from locations.models import Image, ImageMember
from locations.services.glance_import import Finding
from tests.conftest import identity
from tests.functional import test_import_glance
from tests.functional.test_import_glance import (
    ACTIVE_1LOC_024,
    ACTIVE_2LOC_006,
    FIXTURES,
    P3,
    findings,
    glance_copy,
    load_mariadb_dump,
    snapshot,
    sqlite_url,
    summary_line,
)

# Its fixtures, here too: the .ini of the suite's deployment, the import command, the database it writes.
ini, run_import, target = test_import_glance.ini, test_import_glance.run_import, test_import_glance.target
mariadb_port = test_import_glance.mariadb_port

SHARED_P3 = "179030da-9891-4052-8ebc-c1ba943863a5"  # P3, active, shared (not os_hidden: lists show it)
SHARED_P1 = "4dabb96d-d708-43a0-a6f3-8e3e767fe953"  # P1, queued, shared (not os_hidden)
PRIVATE_P1 = ACTIVE_2LOC_006  # P1, active, private
OTHER_PRIVATE_P1 = ACTIVE_1LOC_024  # P1, active, private
GLANCE_CREATED, GLANCE_UPDATED = "2026-11-26 09:00:00", "2026-11-26 10:00:00"


def member_row(row_id: int, image_id: str, member: str, status: str, /, **columns: str) -> str:
    """An INSERT of one Glance image_members row; columns are SQL expressions (deleted, member, created_at, ...)."""
    values = {
        "id": str(row_id),
        "image_id": f"'{image_id}'",
        "member": f"'{member}'",
        "can_share": "false",
        "created_at": f"'{GLANCE_CREATED}'",
        "updated_at": f"'{GLANCE_UPDATED}'",
        "deleted_at": "NULL",
        "deleted": "false",
        "status": f"'{status}'",
        **columns,
    }
    return f"INSERT INTO image_members ({', '.join(values)}) VALUES ({', '.join(values.values())})"


MEMBERS = (
    member_row(1, SHARED_P3, "member-pending", "pending"),
    member_row(2, SHARED_P3, "member-accepted", "accepted"),
    member_row(3, SHARED_P3, "member-rejected", "rejected"),
    member_row(4, SHARED_P1, "member-accepted", "accepted"),
    member_row(5, SHARED_P3, "member-gone", "accepted", deleted="true", deleted_at=f"'{GLANCE_UPDATED}'"),
)
IMPORTED = {
    (SHARED_P3, "member-pending", "pending"),
    (SHARED_P3, "member-accepted", "accepted"),
    (SHARED_P3, "member-rejected", "rejected"),
    (SHARED_P1, "member-accepted", "accepted"),
}


def members(engine: Engine) -> set[tuple[str, str, str]]:
    """(image id, member, status) of every membership in locquota."""
    with Session(engine) as session:
        rows = session.execute(select(ImageMember.image_id, ImageMember.member, ImageMember.status))
        return {(str(image_id), member, status.value) for image_id, member, status in rows}


def members_snapshot(engine: Engine) -> list[tuple[object, ...]]:
    """Every image_members row, ids and timestamps included."""
    with Session(engine) as session:
        return sorted(tuple(row) for row in session.execute(text("SELECT * FROM image_members")))


def out_of_step(engine: Engine) -> list[tuple[str, str]]:
    """Memberships whose image_created_at is not their image's created_at (the member's list walks it)."""
    with Session(engine) as session:
        query = (
            select(ImageMember.image_id, ImageMember.member)
            .join(Image, Image.id == ImageMember.image_id)
            .where(ImageMember.image_created_at != Image.created_at)
        )
        return [(str(image_id), member) for image_id, member in session.execute(query)]


def listed(app, tenant: str, query: str = "") -> set[str]:
    return {image["id"] for image in app.get(f"/v2/images{query}", headers=identity(tenant)).json["images"]}


# --- what is imported ------------------------------------------------------------------------------------------------


def test_live_members_are_imported_with_their_statuses(run_import, target, tmp_path):
    result = run_import(sqlite_url(glance_copy(tmp_path, *MEMBERS)))
    assert members(target) == IMPORTED
    assert out_of_step(target) == []
    with Session(target) as session:
        times = set(session.execute(select(ImageMember.created_at, ImageMember.updated_at)))
    assert {(str(created), str(updated)) for created, updated in times} == {(GLANCE_CREATED, GLANCE_UPDATED)}
    assert summary_line(result, "members") == (
        "5 read, 4 imported (4 new, 0 updated, 0 unchanged), 0 skipped, 1 not imported (deleted in Glance),"
        " 0 removed (no longer in Glance)"
    )
    assert summary_line(result, "members by status") == "accepted 2, pending 1, rejected 1"
    assert summary_line(result, "images") == "39 read, 39 imported (39 new, 0 updated, 0 unchanged), 0 skipped"


def test_members_of_an_image_not_imported_are_skipped(run_import, target, tmp_path):
    glance = glance_copy(tmp_path, *MEMBERS, f"UPDATE images SET owner = NULL WHERE id = '{SHARED_P3}'")
    result = run_import(sqlite_url(glance))
    assert members(target) == {(SHARED_P1, "member-accepted", "accepted")}
    assert findings(result)[Finding.IMAGE_NO_OWNER.value] == 1
    assert summary_line(result, "members").startswith("5 read, 1 imported (1 new, 0 updated, 0 unchanged), 4 skipped")


@pytest.mark.parametrize(
    ("schema", "accepted"),
    [
        pytest.param([], set(), id="no status column (before Grizzly)"),
        pytest.param(
            ["ALTER TABLE image_members ADD COLUMN status VARCHAR(20)", "UPDATE image_members SET status = 'accepted'"
             " WHERE id = 2"],
            {"member-accepted"},
            id="NULL status (Grizzly to Icehouse)",
        ),
    ],
)  # fmt: skip
def test_a_membership_without_status_is_pending(run_import, target, tmp_path, schema, accepted):
    """Glance's own upgrades make a missing or NULL member status pending: so does the import, quietly."""
    glance = glance_copy(tmp_path, *MEMBERS, "ALTER TABLE image_members DROP COLUMN status", *schema)
    result = run_import(sqlite_url(glance))
    assert members(target) == {
        (image, member, "accepted" if image == SHARED_P3 and member in accepted else "pending")
        for image, member, _status in IMPORTED
    }
    assert Finding.MEMBER_UNKNOWN_STATUS.value not in findings(result)


def test_a_glance_without_image_members_imports_its_images(run_import, target, tmp_path):
    result = run_import(sqlite_url(glance_copy(tmp_path, "DROP TABLE image_members")))
    assert members(target) == set()
    assert summary_line(result, "images") == "39 read, 39 imported (39 new, 0 updated, 0 unchanged), 0 skipped"


HOSTILE = [
    pytest.param(
        [member_row(6, SHARED_P1, "member-maybe", "maybe")],
        Finding.MEMBER_UNKNOWN_STATUS, 1, {(SHARED_P1, "member-maybe", "pending")},
        id="unknown status: imported pending",
    ),
    pytest.param(
        [MEMBERS[3], member_row(6, SHARED_P1, "member-accepted", "rejected", updated_at="'2026-11-27 10:00:00'")],
        Finding.MEMBER_DUPLICATE, 1, {(SHARED_P1, "member-accepted", "rejected")},
        id="second live row of a project, answered later: its answer kept",
    ),
    pytest.param(
        [MEMBERS[3], member_row(6, SHARED_P1, "member-accepted", "rejected", updated_at="'2026-11-25 10:00:00'")],
        Finding.MEMBER_DUPLICATE, 1, {(SHARED_P1, "member-accepted", "accepted")},
        id="second live row of a project, answered earlier: the other kept",
    ),
    pytest.param(
        [MEMBERS[3],
         member_row(6, SHARED_P1, "member-accepted", "rejected", updated_at="NULL", created_at=f"'{GLANCE_UPDATED}'")],
        Finding.MEMBER_DUPLICATE, 1, {(SHARED_P1, "member-accepted", "rejected")},
        id="second live row of a project, as recent: the later row kept",
    ),
    pytest.param(
        [member_row(6, SHARED_P1, "", "accepted")],
        Finding.MEMBER_UNUSABLE, 1, set(),
        id="empty member",
    ),
    pytest.param(
        [member_row(6, SHARED_P1, "   ", "accepted")],
        Finding.MEMBER_UNUSABLE, 1, set(),
        id="blank member",
    ),
    pytest.param(
        [member_row(6, SHARED_P1, "x", "accepted", member="'a' || char(0) || 'b'")],
        Finding.MEMBER_UNUSABLE, 1, set(),
        id="member with a NUL character",
    ),
    pytest.param(
        [member_row(6, SHARED_P1, "x", "accepted", member="'p' || hex(zeroblob(128))")],
        Finding.MEMBER_UNUSABLE, 1, set(),
        id="member of 257 characters",
    ),
    pytest.param(
        [member_row(6, SHARED_P1, "x", "accepted", member="'p' || substr(hex(zeroblob(127)), 2)")],
        None, 0, {(SHARED_P1, "p" + "0" * 253, "accepted")},
        id="member of 254 characters: imported",
    ),
    pytest.param(
        [member_row(6, SHARED_P1, "x", "accepted", member="'p' || hex(zeroblob(127))")],
        None, 0, {(SHARED_P1, "p" + "0" * 254, "accepted")},
        id="member of 255 characters: imported",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("statements", "finding", "count", "added"), HOSTILE)
def test_bad_memberships_are_reported_and_the_rest_imported(
    run_import, target, tmp_path, statements, finding, count, added
):
    url = sqlite_url(glance_copy(tmp_path, *MEMBERS[:3], *statements))
    result = run_import(url)
    if finding is not None:
        assert findings(result)[finding.value] == count
    assert members(target) == {row for row in IMPORTED if row[0] == SHARED_P3} | added
    assert summary_line(result, "images") == "39 read, 39 imported (39 new, 0 updated, 0 unchanged), 0 skipped"
    assert out_of_step(target) == []
    before = members_snapshot(target)
    run_import(url)  # bad rows do not make a re-run write again
    assert members_snapshot(target) == before


# --- what members see ------------------------------------------------------------------------------------------------


def test_a_member_sees_the_imported_shared_image_and_an_accepted_one_lists_it(run_import, app, tmp_path):
    run_import(sqlite_url(glance_copy(tmp_path, *MEMBERS)))

    for member in ("member-pending", "member-accepted", "member-rejected"):
        assert app.get(f"/v2/images/{SHARED_P3}", headers=identity(member)).json["id"] == SHARED_P3
    assert {SHARED_P3, SHARED_P1} <= listed(app, "member-accepted")
    assert SHARED_P3 not in listed(app, "member-pending")
    assert SHARED_P3 in listed(app, "member-pending", "?member_status=pending")
    assert SHARED_P3 in listed(app, "member-rejected", "?member_status=rejected")
    app.get(f"/v2/images/{SHARED_P3}", headers=identity("member-gone"), status=404)  # deleted in Glance
    app.get(f"/v2/images/{SHARED_P1}", headers=identity("member-pending"), status=404)

    entries = app.get(f"/v2/images/{SHARED_P3}/members", headers=identity(P3)).json["members"]
    assert {(entry["member_id"], entry["status"]) for entry in entries} == {
        ("member-pending", "pending"),
        ("member-accepted", "accepted"),
        ("member-rejected", "rejected"),
    }
    answered = app.put_json(
        f"/v2/images/{SHARED_P3}/members/member-pending", {"status": "accepted"}, headers=identity("member-pending")
    )
    assert answered.json["status"] == "accepted"
    assert SHARED_P3 in listed(app, "member-pending")


def test_before_ocata_a_private_image_with_members_is_imported_shared(run_import, target, app, tmp_path):
    """Glance's Ocata migration makes a non-public image with live members shared: its members keep it."""
    glance = glance_copy(
        tmp_path,
        "DROP INDEX visibility_image_idx",
        "ALTER TABLE images ADD COLUMN is_public BOOLEAN NOT NULL DEFAULT 0",
        "UPDATE images SET is_public = 1 WHERE visibility = 'public'",
        "ALTER TABLE images DROP COLUMN visibility",
        member_row(1, PRIVATE_P1, "member-accepted", "accepted"),
        member_row(2, OTHER_PRIVATE_P1, "member-gone", "accepted", deleted="true", deleted_at=f"'{GLANCE_UPDATED}'"),
    )
    result = run_import(sqlite_url(glance))
    assert findings(result)[Finding.SHARED_BEFORE_OCATA.value] == 1
    with Session(target) as session:
        visibilities = dict(session.execute(select(Image.id, Image.visibility)).all())
    assert visibilities[uuid.UUID(PRIVATE_P1)].value == "shared"
    assert visibilities[uuid.UUID(OTHER_PRIVATE_P1)].value == "private"
    assert PRIVATE_P1 in listed(app, "member-accepted")
    app.get(f"/v2/images/{OTHER_PRIVATE_P1}", headers=identity("member-gone"), status=404)


# --- re-runs and dry runs --------------------------------------------------------------------------------------------


def test_a_second_import_changes_no_membership(run_import, target, tmp_path):
    url = sqlite_url(glance_copy(tmp_path, *MEMBERS))
    run_import(url)
    before = (snapshot(target), members_snapshot(target))
    result = run_import(url)
    assert (snapshot(target), members_snapshot(target)) == before
    assert summary_line(result, "members").startswith("5 read, 4 imported (0 new, 0 updated, 4 unchanged), 0 skipped")
    assert summary_line(result, "images") == "39 read, 39 imported (0 new, 0 updated, 39 unchanged), 0 skipped"


def test_a_rerun_makes_the_members_glances_again(run_import, target, tmp_path):
    glance = glance_copy(tmp_path, *MEMBERS)
    run_import(sqlite_url(glance))
    with closing(sqlite3.connect(glance)) as connection, connection:
        # Between the runs: one answer changes, one member is removed, one is added.
        connection.execute("UPDATE image_members SET status = 'accepted', updated_at = '2026-11-27' WHERE id = 1")
        connection.execute(f"UPDATE image_members SET deleted = 1, deleted_at = '{GLANCE_UPDATED}' WHERE id = 3")
        connection.execute(member_row(6, SHARED_P3, "member-new", "pending"))
    result = run_import(sqlite_url(glance))
    assert members(target) == {
        (SHARED_P3, "member-pending", "accepted"),
        (SHARED_P3, "member-accepted", "accepted"),
        (SHARED_P3, "member-new", "pending"),
        (SHARED_P1, "member-accepted", "accepted"),
    }
    assert summary_line(result, "members") == (
        "6 read, 4 imported (1 new, 1 updated, 2 unchanged), 0 skipped, 2 not imported (deleted in Glance),"
        " 1 removed (no longer in Glance)"
    )
    assert summary_line(result, "images") == "39 read, 39 imported (0 new, 1 updated, 38 unchanged), 0 skipped"


def test_members_follow_their_image_created_at(run_import, target, tmp_path):
    """image_created_at is the image's created_at: when Glance's changes, a re-run moves both."""
    glance = glance_copy(tmp_path, *MEMBERS)
    run_import(sqlite_url(glance))
    with closing(sqlite3.connect(glance)) as connection, connection:
        connection.execute(f"UPDATE images SET created_at = '2026-11-20 08:00:00' WHERE id = '{SHARED_P3}'")
    result = run_import(sqlite_url(glance))
    assert "(0 new, 3 updated, 1 unchanged)" in summary_line(result, "members")
    assert out_of_step(target) == []
    with Session(target) as session:
        assert str(session.get(Image, uuid.UUID(SHARED_P3)).created_at) == "2026-11-20 08:00:00"


def test_members_of_an_image_without_created_at_keep_its_stand_in_time(run_import, target, tmp_path):
    """The import's time stands in for an unreadable created_at, kept on re-runs: the members' too."""
    url = sqlite_url(
        glance_copy(
            tmp_path,
            *MEMBERS,
            f"UPDATE images SET created_at = 'the day before yesterday' WHERE id = '{SHARED_P3}'",
            "UPDATE image_members SET created_at = 'never', updated_at = NULL WHERE id = 1",
        )
    )
    run_import(url)
    assert out_of_step(target) == []
    before = members_snapshot(target)
    result = run_import(url)
    assert members_snapshot(target) == before
    assert "(0 new, 0 updated, 4 unchanged)" in summary_line(result, "members")


def test_dry_run_writes_no_membership(run_import, target, tmp_path):
    result = run_import(sqlite_url(glance_copy(tmp_path, *MEMBERS)), "--dry-run")
    assert members_snapshot(target) == []
    assert summary_line(result, "members") == (
        "5 read, 4 would be imported (4 new, 0 updated, 0 unchanged), 0 skipped, 1 not imported (deleted in Glance),"
        " 0 would be removed (no longer in Glance)"
    )


def test_memberships_are_written_in_the_images_batches(run_import, target, tmp_path):
    """Small batches: each image's members go with it, whichever batch it falls in."""
    result = run_import(sqlite_url(glance_copy(tmp_path, *MEMBERS)), "--batch-size", "3")
    assert members(target) == IMPORTED
    assert summary_line(result, "members").startswith("5 read, 4 imported (4 new, 0 updated, 0 unchanged)")


# --- Glance on PostgreSQL and MariaDB --------------------------------------------------------------------------------

# Characters, not bytes: 200 characters of two bytes each fit Glance's String(255), and locquota's.
WIDE_MEMBER = "é" * 200
DUMP_MEMBERS = (*MEMBERS, member_row(6, SHARED_P1, WIDE_MEMBER, "pending"))


@pytest.fixture
def glance_with_members(request: pytest.FixtureRequest, postgresql_admin_url: str) -> Iterator[str]:
    """The dump of request.param's Glance, loaded into a database of its own, with DUMP_MEMBERS added."""
    name = f"glance_members_{uuid.uuid4().hex[:8]}"
    if request.param == "mariadb":
        yield load_mariadb_dump(request.getfixturevalue("mariadb_port"), name, *DUMP_MEMBERS)
        return
    with psycopg.connect(postgresql_admin_url + "/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    with psycopg.connect(f"{postgresql_admin_url}/{name}", autocommit=True) as connection:
        connection.execute((FIXTURES / "glance-33.postgresql.sql").read_text())
        connection.execute("SET search_path TO public")  # the dump empties it
        for statement in DUMP_MEMBERS:
            connection.execute(statement)
    yield f"{postgresql_admin_url}/{name}"


@pytest.mark.glance_dump
@pytest.mark.parametrize("glance_with_members", ["postgresql", "mariadb"], indirect=True)
def test_members_from_glance_on_postgresql_and_mariadb(run_import, target, glance_with_members):
    result = run_import(glance_with_members)
    assert members(target) == {*IMPORTED, (SHARED_P1, WIDE_MEMBER, "pending")}
    assert summary_line(result, "members").startswith("6 read, 5 imported (5 new, 0 updated, 0 unchanged), 0 skipped")
    assert out_of_step(target) == []
    result = run_import(glance_with_members)
    assert "(0 new, 0 updated, 5 unchanged)" in summary_line(result, "members")
