"""ServerConfig: defaults, precedence (file < environment < arguments), parsing and redaction."""

from __future__ import annotations

import json

import pytest

from semcache.embedders import HashingEmbedder
from semcache.errors import ConfigurationError
from semcache.server.config import ServerConfig, load_settings


def test_defaults_are_the_embedded_setup():
    cfg = ServerConfig.load(environ={})
    assert cfg.host == "127.0.0.1" and cfg.port == 8080 and cfg.auth is True
    assert cfg.cache.memory is not None and cfg.cache.redis is None
    assert cfg.cache.sql is not None and cfg.cache.sql.url == "sqlite:///semcache.db"
    assert cfg.cache.embedder == "default"
    assert cfg.batching and cfg.batch_max == 32 and cfg.max_body_bytes == 1024 * 1024


def test_environment(tmp_path):
    env = {
        "SEMCACHE_PORT": "9000",
        "SEMCACHE_TOKENS": "t1=tenant-a, t2=tenant-b",
        "SEMCACHE_ADMIN_TOKEN": "root",
        "SEMCACHE_REDIS_URL": "redis://:hunter2@redis.example:6379/0",
        "SEMCACHE_SQL_URL": "postgresql+psycopg://app:s3cret@db.example/semcache",
        "SEMCACHE_THRESHOLD": "0.85",
        "SEMCACHE_TTL_SECONDS": "none",
        "SEMCACHE_EMBEDDER": "hashing:32",
        "SEMCACHE_BATCHING": "off",
        "SEMCACHE_UPSTREAM_URL": "https://api.openai.com/v1",
        "SEMCACHE_UPSTREAM_API_KEY": "sk-live-123",
        "SEMCACHE_PRICES": "gpt-4o-mini=0.15/0.6",
    }
    cfg = ServerConfig.from_env(environ=env)
    assert (
        cfg.port == 9000
        and cfg.tokens == {"t1": "tenant-a", "t2": "tenant-b"}
        and cfg.admin_token == "root"
    )
    assert cfg.cache.redis is not None and cfg.cache.redis.url.endswith("redis.example:6379/0")
    assert (
        cfg.cache.policy.similarity_threshold == 0.85
        and cfg.cache.policy.default_ttl_seconds is None
    )
    assert isinstance(cfg.cache.embedder, HashingEmbedder) and cfg.cache.embedder.dim == 32
    assert cfg.batching is False and cfg.prices == {"gpt-4o-mini": (0.15, 0.6)}


def test_tokens_may_end_in_base64_padding():
    cfg = ServerConfig.from_env(environ={"SEMCACHE_TOKENS": "YWJjZA===tenant-a, YWI=tenant-b"})
    assert cfg.tokens == {"YWJjZA==": "tenant-a", "YWI": "tenant-b"}


def test_precedence_file_then_env_then_arguments(tmp_path):
    f = tmp_path / "semcache.toml"
    f.write_text(
        'port = 7000\nhost = "0.0.0.0"\nbatch_max = 8\n[tokens]\n"file-token" = "tenant-f"\n'
    )
    cfg = ServerConfig.load(
        file=f, environ={"SEMCACHE_PORT": "7100", "SEMCACHE_BATCH_MAX": "16"}, batch_max=64
    )
    assert cfg.host == "0.0.0.0"  # file
    assert cfg.port == 7100  # env over file
    assert cfg.batch_max == 64  # argument over env
    assert cfg.tokens == {"file-token": "tenant-f"}
    # None arguments mean "not given"
    assert ServerConfig.load(file=f, environ={}, port=None).port == 7000


def test_json_file_and_semcache_table(tmp_path):
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"port": 1234, "prices": {"m": [1, 2]}, "embedder": "none"}))
    cfg = ServerConfig.load(file=j, environ={})
    assert cfg.port == 1234 and cfg.prices == {"m": (1.0, 2.0)} and cfg.cache.embedder is None
    t = tmp_path / "c.toml"
    t.write_text('[semcache]\nport = 4321\nsql_url = "none"\n')
    cfg = ServerConfig.load(environ={"SEMCACHE_CONFIG": str(t)})
    assert cfg.port == 4321 and cfg.cache.sql is None


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"SEMCACHE_PORT": "eighty"}, "integer"),
        ({"SEMCACHE_PORT": "70000"}, "port"),
        ({"SEMCACHE_AUTH": "maybe"}, "true or false"),
        ({"SEMCACHE_TOKENS": "no-equals-sign"}, "TOKEN=TENANT"),
        ({"SEMCACHE_UPSTREAM_URL": "ftp://x"}, "http"),
        ({"SEMCACHE_SQL_URL": "mysql://x"}, "SQL URL scheme"),
        ({"SEMCACHE_BATCH_WINDOW_MS": "nan"}, "finite"),
        ({"SEMCACHE_TOKENS": "same=t", "SEMCACHE_ADMIN_TOKEN": "same"}, "admin token"),
    ],
)
def test_bad_values_are_configuration_errors(env, match):
    with pytest.raises(ConfigurationError, match=match):
        ServerConfig.load(environ=env)


def test_unknown_file_setting_and_unreadable_file(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("prot = 1\n")
    with pytest.raises(ConfigurationError, match="unknown setting.*prot"):
        ServerConfig.load(file=f, environ={})
    with pytest.raises(ConfigurationError, match="cannot read"):
        ServerConfig.load(file=tmp_path / "missing.toml", environ={})
    f.write_text("port = [")
    with pytest.raises(ConfigurationError, match="not valid"):
        ServerConfig.load(file=f, environ={})
    with pytest.raises(ConfigurationError, match="unknown setting"):
        load_settings(environ={}, overrides={"bogus": 1})


def test_secrets_never_printed():
    cfg = ServerConfig.from_env(
        environ={
            "SEMCACHE_TOKENS": "tenant-secret-token=acme",
            "SEMCACHE_ADMIN_TOKEN": "admin-secret-token",
            "SEMCACHE_REDIS_URL": "redis://:redis-password@r:6379/0",
            "SEMCACHE_SQL_URL": "postgresql+psycopg://u:pg-password@h/db",
            "SEMCACHE_UPSTREAM_URL": "https://user:up-password@llm.example/v1",
            "SEMCACHE_UPSTREAM_API_KEY": "sk-secret-key",
            "SEMCACHE_EMBEDDER": "none",
        }
    )
    shown = repr(cfg) + json.dumps(cfg.describe())
    for secret in (
        "tenant-secret-token",
        "admin-secret-token",
        "redis-password",
        "pg-password",
        "up-password",
        "sk-secret-key",
    ):
        assert secret not in shown, secret
    assert "acme" in shown and "***" in shown


def test_the_index_backend_is_a_setting():
    assert ServerConfig.load(environ={}).cache.index.backend == "auto"
    cfg = ServerConfig.load(environ={"SEMCACHE_INDEX": "PGVector", "SEMCACHE_SQL_URL": "postgresql+psycopg://h/db"})
    assert cfg.cache.index.backend == "pgvector" and cfg.describe()["index"] == "pgvector"
    with pytest.raises(ConfigurationError, match="backend"):
        ServerConfig.load(environ={"SEMCACHE_INDEX": "annoy"})
