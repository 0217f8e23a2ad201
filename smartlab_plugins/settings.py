"""Where SmartLab finds its Tiled server, its API key and its data folder.

One place reads the environment, so every entry point (the callback, the CLI,
the IPython profile) agrees:

``SMARTLAB_TILED_URI``
    The Tiled server to publish to and read from.
``SMARTLAB_API_KEY``
    The API key for that server. If unset, the key that ``smartlab serve``
    generated in the data folder is used, when there is one.
``SMARTLAB_DATA_DIR``
    The embedded server's catalog, files and generated key. Default:
    ``$XDG_DATA_HOME/smartlab``, i.e. ``~/.local/share/smartlab``.
``SMARTLAB_SPOOL_DIR``
    Where results wait on local disk until Tiled has them (a journal per
    worker, see :mod:`smartlab_plugins.spool`). Default: ``spool`` in the data
    folder.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

API_KEY_FILENAME = "api_key"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


class ConfigurationError(ValueError):
    """A setting (environment variable or argument) SmartLab cannot use, and why."""


def default_data_dir() -> Path:
    """The data folder of the embedded server, from the environment or XDG."""
    if explicit := os.environ.get("SMARTLAB_DATA_DIR"):
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(xdg) / "smartlab"


def spool_dir() -> Path:
    """The folder of the local journals of results not yet in Tiled."""
    if explicit := os.environ.get("SMARTLAB_SPOOL_DIR"):
        return Path(explicit).expanduser()
    return default_data_dir() / "spool"


def tiled_uri() -> str | None:
    """The Tiled server named by ``SMARTLAB_TILED_URI``, or None."""
    return os.environ.get("SMARTLAB_TILED_URI") or None


def stored_api_key(data_dir: Path | None = None) -> str | None:
    """The key ``smartlab serve`` stored in ``data_dir``, or None if there is none."""
    path = Path(data_dir or default_data_dir()) / API_KEY_FILENAME
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def api_key(data_dir: Path | None = None) -> str | None:
    """The API key clients use: ``SMARTLAB_API_KEY``, else the stored one."""
    return os.environ.get("SMARTLAB_API_KEY") or stored_api_key(data_dir)


def server_api_key(data_dir: Path) -> tuple[str, bool]:
    """The key the embedded server requires, and whether it was generated now.

    ``SMARTLAB_API_KEY`` wins; otherwise the key stored in ``data_dir`` is
    reused, and on first start a new one is generated and stored there with
    user-only permissions (0600).
    """
    if explicit := os.environ.get("SMARTLAB_API_KEY"):
        if not explicit.isalnum():
            raise ConfigurationError(
                "SMARTLAB_API_KEY must contain only letters and digits (Tiled refuses others); "
                'make one with: python -c "import secrets; print(secrets.token_hex(24))"'
            )
        return explicit, False
    if stored := stored_api_key(data_dir):
        return stored, False
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(24)
    path = data_dir / API_KEY_FILENAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key, True
