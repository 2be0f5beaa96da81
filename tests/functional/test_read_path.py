"""The cheap read path (issue 18): GET and list without pre-ping, BEGIN or ROLLBACK, from statements built once.

A restarted PostgreSQL (this module's own server, stopped at once as a crash would stop it) must not fail
the first requests that find its dead connections in the pool; reads in autocommit are still planned for
their own values (never prepared); statements built once per shape never carry one request's values into
the next.
"""

from sqlalchemy import Engine

from tests import stoppable_postgresql
from tests.conftest import identity
from tests.servers import PostgresqlServer

TENANT = identity("tenant-a")
# This module stops and starts its own PostgreSQL: the app runs on it (database_url overrides conftest's).
own_postgresql, database_url = stoppable_postgresql.own_postgresql, stoppable_postgresql.database_url


def restart(server: PostgresqlServer) -> None:
    server.stop()
    server.start()


def test_the_first_requests_after_a_database_restart_are_served(app, engine: Engine, own_postgresql, new_image, upload):
    image = new_image()
    app.get("/v2/images", headers=TENANT, status=200)
    assert engine.pool.checkedin() == 1  # the connection the restart will kill waits in the pool

    restart(own_postgresql)
    listed = app.get("/v2/images", headers=TENANT, status=200).json["images"]
    restart(own_postgresql)
    shown = app.get(f"/v2/images/{image['id']}", headers=TENANT, status=200).json
    restart(own_postgresql)
    # An upload runs once (pyramid_retry never replays a streamed body): only the pool's check saves it.
    upload(image["id"], b"after the restart")

    assert [entry["id"] for entry in listed] == [image["id"]]
    assert shown["id"] == image["id"]
    assert app.get(f"/v2/images/{image['id']}", headers=TENANT, status=200).json["status"] == "active"


def test_pages_are_never_prepared_so_each_is_planned_for_its_own_tenant_and_marker(app, engine: Engine, new_image):
    image = new_image()
    for _ in range(8):  # psycopg prepares a statement from its 6th run on a connection unless told not to
        app.get("/v2/images?limit=5", headers=TENANT, status=200)
        app.get(f"/v2/images?limit=5&marker={image['id']}", headers=TENANT, status=200)
        app.get(f"/v2/images/{image['id']}", headers=TENANT, status=200)

    assert engine.pool.checkedin() == 1  # the only connection, the one the reads ran on
    with engine.connect() as connection:
        prepared = connection.exec_driver_sql("SELECT statement FROM pg_prepared_statements").scalars().all()

    # Only the lookups by primary key (the image, the marker's sort keys) are prepared: their plan is pk_images.
    assert len(prepared) == 2, prepared
    assert all("WHERE images.id = " in statement and "LIMIT" not in statement for statement in prepared), prepared


def test_lists_of_one_shape_answer_each_for_its_own_values(app, new_image, clock):
    blue = new_image(name="blue", tags=["blue"], os_distro="debian")
    clock.advance(seconds=1)  # red is the newer: the first of the default order
    red = new_image(name="red", tags=["red"], os_distro="fedora")
    other = identity("tenant-b")
    theirs = new_image(headers=other, name="theirs", tags=["blue"])

    def names(query: str, headers: dict[str, str] = TENANT) -> list[str]:
        return [image["name"] for image in app.get(f"/v2/images?{query}", headers=headers, status=200).json["images"]]

    assert names("tag=blue") == ["blue"]
    assert names("tag=red") == ["red"]
    assert names("tag=blue", headers=other) == ["theirs"]
    assert names("os_distro=fedora") == ["red"]
    assert names("os_distro=debian") == ["blue"]
    assert names("name=in:red,blue&sort=name:asc") == ["blue", "red"]
    assert names("name=red") == ["red"]
    assert names("limit=1") == ["red"]
    assert names(f"limit=1&marker={red['id']}") == ["blue"]
    assert names(f"limit=1&marker={blue['id']}") == []
    assert names(f"id=in:{blue['id']},{theirs['id']}") == ["blue"]
    assert app.get(f"/v2/images/{theirs['id']}", headers=TENANT, status=404)
    assert app.get(f"/v2/images/{theirs['id']}", headers=other, status=200).json["name"] == "theirs"
