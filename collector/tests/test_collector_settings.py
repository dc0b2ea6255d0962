"""Settings: precedence of the URL sources, errors that name the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from cdrstats_agent.errors import ConfigError
from cdrstats_collector import settings


def test_precedence(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[database]\nurl = "postgresql://file/db"\npool_max = 3\n'
        '[server]\nport = 9000\npublic_url = "https://cdr.example.net/"\n'
    )
    env = {"CDRSTATS_DATABASE_URL": "postgresql://env/db"}
    s = settings.load("postgresql://cli/db", config, env)
    assert (s.database_url, s.pool_max, s.port) == ("postgresql://cli/db", 3, 9000)
    assert settings.load(None, config, env).database_url == "postgresql://env/db"
    assert settings.load(None, config, {}).database_url == "postgresql://file/db"
    assert settings.load(None, config, {}).url == "https://cdr.example.net"
    assert settings.load(None, config, {}).aggregates is True
    config.write_text('[database]\nurl = "u"\n[ingest]\naggregates = false\n')
    assert settings.load(None, config, {}).aggregates is False
    config.write_text('[database]\nurl = "postgresql://file/db"\n')
    via_env = settings.load(None, None, {"CDRSTATS_CONFIG": str(config)})
    assert via_env.database_url == "postgresql://file/db"


def test_url_only_needs_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "DEFAULT_CONFIG", tmp_path / "absent.toml")
    s = settings.load("postgresql://x/y", None, {})
    assert s.url == "http://127.0.0.1:8080"
    with pytest.raises(ConfigError, match="no database URL given"):
        settings.load(None, None, {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[database\n", "is not valid TOML"),
        ('[database]\nurl = "u"\nurll = 1\n', "database.urll: is not a known option"),
        ('[database]\nurl = "u"\n[server]\nport = "80"\n', "server.port: must be an integer"),
        ('[database]\nurl = "u"\n[server]\nport = 70000\n', "server.port: must be at most"),
        ('[database]\nurl = "u"\n[sever]\n', "sever: is not a known option"),
        ('[database]\nurl = "u"\n[ingest]\naggregates = "no"\n', "ingest.aggregates: must be"),
        ('[database]\nurl = "u"\n[import]\nmax_upload_mb = 0\n', "import.max_upload_mb: must be"),
    ],
)
def test_errors_name_key_and_file(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        settings.load(None, config, {})
    assert str(info.value).startswith(f"{config}: ")
    assert message in str(info.value)


def test_import_uploads(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[database]\nurl = "u"\n[import]\nupload_dir = "/srv/up"\nmax_upload_mb = 5\n'
    )
    loaded = settings.load(None, config, {})
    assert (loaded.upload_dir, loaded.max_upload_bytes) == ("/srv/up", 5 * 1024 * 1024)
    assert settings.Settings("u").max_upload_bytes == 2048 * 1024 * 1024
