"""The usage cache through Redis Sentinel: a real master and a real sentinel (`redis-server --sentinel`)."""

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import port_for
import pytest
import redis
from redis.sentinel import Sentinel

from locquota.settings import Settings, SettingsError
from quota.services.usage_cache import KEY_PREFIX
from tests.servers import REDIS_SERVER, START_DEADLINE, STOP_DEADLINE, RedisServer

SERVICE = "locquota-cache"


@pytest.fixture
def master(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def sentinel_address(master: RedisServer, tmp_path: Path) -> Iterator[str]:
    """A sentinel watching the master; ready once it names the master (polled, with a deadline)."""
    port = port_for.select_random()
    config = tmp_path / "sentinel.conf"  # the sentinel rewrites its config, so it must be writable
    config.write_text(
        f"port {port}\nbind 127.0.0.1\nsentinel monitor {SERVICE} 127.0.0.1 {master.port} 1\n"
        f"sentinel down-after-milliseconds {SERVICE} 60000\n"
    )
    process = subprocess.Popen([REDIS_SERVER, str(config), "--sentinel"], stdout=subprocess.DEVNULL)
    try:
        sentinel = Sentinel([("127.0.0.1", port)], socket_timeout=1)
        master_address = None
        for _ in range(START_DEADLINE * 100):
            try:
                master_address = sentinel.discover_master(SERVICE)
                break
            except (redis.ConnectionError, redis.sentinel.MasterNotFoundError):
                assert process.poll() is None, "redis-server --sentinel exited"
                time.sleep(0.01)  # polling an observed condition (a poll interval, not a synchronisation)
        assert master_address == ("127.0.0.1", master.port)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(STOP_DEADLINE)


def test_usage_is_cached_in_the_master_sentinel_names(make_app, settings, sentinel_address, master, tenant):
    app = make_app(
        {
            **settings,
            "locquota.redis_url": "redis:///3",  # with sentinels the URL gives only the database and credentials
            "locquota.redis_sentinels": sentinel_address,
            "locquota.redis_sentinel_service": SERVICE,
        }
    )
    assert app.get("/readyz").json["cache"] == "up"
    assert app.get("/v1/usage", headers=tenant).json["freshness"]["source"] == "database"
    assert app.get("/v1/usage", headers=tenant).json["freshness"]["source"] == "cache"
    assert redis.Redis(host="127.0.0.1", port=master.port, db=3).exists(KEY_PREFIX + "tenant-a")


@pytest.mark.parametrize(
    ("sentinels", "service"), [("127.0.0.1", "s"), ("127.0.0.1:0", "s"), ("host:port", "s"), ("127.0.0.1:26379", "")]
)
def test_bad_sentinel_settings_stop_the_boot(sentinels, service):
    with pytest.raises(SettingsError, match="redis_sentinel"):
        Settings.from_ini({"locquota.redis_sentinels": sentinels, "locquota.redis_sentinel_service": service})
