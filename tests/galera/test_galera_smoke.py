"""The cluster itself: three nodes in one Primary component, the migrated schema on each, a write on one read on
another."""

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text

from locquota.db import alembic_config, make_engine
from tests.galera.cluster import GaleraCluster, synced_reads

pytestmark = pytest.mark.galera

LOCK_SLOTS = 2**16  # migration 0011's data_key_lock_slots rows on MariaDB: one transaction, one write set


def test_three_nodes_are_one_synced_primary_component(galera: GaleraCluster, galera_urls: list[str]) -> None:
    statuses = [node.status() for node in galera.nodes]
    assert [status["wsrep_cluster_size"] for status in statuses] == ["3", "3", "3"]
    assert {(status["wsrep_cluster_status"], status["wsrep_local_state_comment"]) for status in statuses} == {
        ("Primary", "Synced")
    }
    assert len({status["wsrep_cluster_state_uuid"] for status in statuses}) == 1


def test_the_migrated_schema_with_its_lock_slots_is_on_every_node(galera_urls: list[str]) -> None:
    for url in galera_urls:
        engine = make_engine(synced_reads(url))
        try:
            newest = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
            with engine.connect() as connection:
                slots = connection.execute(text("SELECT count(*), min(slot), max(slot) FROM data_key_lock_slots")).one()
                head = connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        finally:
            engine.dispose()
        assert tuple(slots) == (LOCK_SLOTS, 0, LOCK_SLOTS - 1), url
        assert head == newest, url


def test_a_write_on_node_1_is_read_on_node_3(galera_urls: list[str]) -> None:
    writer, reader = make_engine(galera_urls[0]), make_engine(synced_reads(galera_urls[2]))
    try:
        with writer.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO tenant_limits (tenant_id, resource, value, updated_at)"
                    " VALUES ('smoke', 'image_count_total', 7, NOW(6))"
                )
            )
        with reader.connect() as connection:
            value = connection.execute(text("SELECT value FROM tenant_limits WHERE tenant_id = 'smoke'")).scalar_one()
        assert value == 7
    finally:
        writer.dispose()
        reader.dispose()
