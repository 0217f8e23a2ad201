"""Where SmartLab finds its server and key: its own variables, then Tiled's."""

from __future__ import annotations

import pytest

from smartlab_plugins import settings


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    for name in (
        "SMARTLAB_API_KEY",
        "TILED_API_KEY",
        "SMARTLAB_TILED_URI",
        "SMARTLAB_TILED_PROFILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SMARTLAB_DATA_DIR", str(tmp_path / "data"))
    return monkeypatch


def test_the_api_key_is_smartlabs_then_tileds_then_the_stored_one(clean_env, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / settings.API_KEY_FILENAME).write_text("stored\n")
    assert settings.api_key() == "stored"
    clean_env.setenv("TILED_API_KEY", "tiled")
    assert settings.api_key() == "tiled"
    clean_env.setenv("SMARTLAB_API_KEY", "smartlab")
    assert settings.api_key() == "smartlab"


def test_a_tiled_profile_names_the_server(clean_env, tmp_path):
    from tiled.profiles import load_profiles

    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "beamline.yml").write_text(
        "beamline:\n  uri: http://tiled.example:8000\nlocal:\n  direct:\n    trees: []\n"
    )
    clean_env.setattr("tiled.profiles.paths", [profiles])
    load_profiles.cache_clear()
    try:
        clean_env.setenv("SMARTLAB_TILED_PROFILE", "beamline")
        assert settings.tiled_uri() == "http://tiled.example:8000"
        clean_env.setenv("SMARTLAB_TILED_URI", "http://127.0.0.1:9000")
        assert settings.tiled_uri() == "http://127.0.0.1:9000"  # the explicit URI wins
        clean_env.delenv("SMARTLAB_TILED_URI")
        clean_env.setenv("SMARTLAB_TILED_PROFILE", "local")
        with pytest.raises(settings.ConfigurationError, match="has no 'uri'"):
            settings.tiled_uri()
        clean_env.setenv("SMARTLAB_TILED_PROFILE", "nowhere")
        with pytest.raises(settings.ConfigurationError, match="no such Tiled profile"):
            settings.tiled_uri()
    finally:
        load_profiles.cache_clear()


def test_the_worker_s_threads_are_half_the_cores_unless_told(monkeypatch):
    monkeypatch.delenv("SMARTLAB_WORKER_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert settings.worker_threads() == 8
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert settings.worker_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # the user's own choice stands
    assert settings.worker_threads() is None
    monkeypatch.setenv("SMARTLAB_WORKER_THREADS", "3")  # SmartLab's own setting wins
    assert settings.worker_threads() == 3
    for wrong in ("0", "two", "-1"):
        monkeypatch.setenv("SMARTLAB_WORKER_THREADS", wrong)
        with pytest.raises(settings.ConfigurationError, match="SMARTLAB_WORKER_THREADS"):
            settings.worker_threads()
