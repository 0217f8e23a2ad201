"""Where SmartLab finds its Tiled server, its API key and its data folder.

One place reads the environment, so every entry point (the callback, the CLI,
the IPython profile) agrees:

``SMARTLAB_TILED_URI``
    The Tiled server to publish to and read from. If unset, the ``uri`` of the
    Tiled profile named by ``SMARTLAB_TILED_PROFILE`` (``tiled profile list``),
    when one is named.
``SMARTLAB_TILED_PROFILE``
    A Tiled client profile to take the server's URI from (see above).
``SMARTLAB_API_KEY``, ``TILED_API_KEY``
    The API key for that server, looked up in this order: ``SMARTLAB_API_KEY``,
    then ``TILED_API_KEY`` (the variable Tiled's own client reads, so a shell
    set up for Tiled works unchanged), then the key that ``smartlab serve``
    generated in the data folder, when there is one. ``smartlab serve`` itself
    requires ``SMARTLAB_API_KEY`` or its stored key, never ``TILED_API_KEY``.
``SMARTLAB_DATA_DIR``
    The embedded server's catalog, files and generated key. Default:
    ``$XDG_DATA_HOME/smartlab``, i.e. ``~/.local/share/smartlab``.
``SMARTLAB_SPOOL_DIR``
    Where results wait on local disk until Tiled has them (a journal per
    worker, see :mod:`smartlab_plugins.publish.journal`). Default: ``spool`` in the data
    folder.
``SMARTLAB_CATALOG_URI``
    A PostgreSQL database (``postgresql://user:password@host:port/database``)
    for ``smartlab serve`` to keep its catalog and SQL tables in, instead of
    SQLite files in the data folder; see :func:`catalog_uri`.
``SMARTLAB_COMPUTE``
    The compute engine for stateless plugins' batches: a Dask scheduler's
    address (``tcp://host:8786``), or ``local[:N]``; unset, they are analysed
    in the worker (see :mod:`smartlab_plugins.compute`).
``SMARTLAB_DATA_ROOTS``
    Folders (separated by ``:``, ``os.pathsep``) under which detector files
    named by documents may be read; see :func:`data_roots`.
``SMARTLAB_WORKER_THREADS``
    Threads for the worker process' numerical libraries (torch's and BLAS'
    ``OMP_NUM_THREADS``); see :func:`worker_threads`. Default: half the CPU
    cores, at least 1, unless ``OMP_NUM_THREADS`` is set.
``SMARTLAB_CONFIG``
    A TOML file of settings, by table: ``[server]`` (``catalog``) here, the
    transport's ``[broker]`` and ``[worker]``. Default ``smartlab.toml`` in
    ``$XDG_CONFIG_HOME`` (``~/.config``), used if it exists. A command-line
    option wins over the environment, the environment over the file.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Any

API_KEY_FILENAME = "api_key"
CONFIG_FILENAME = "smartlab.toml"
SQLITE_CATALOG = "sqlite"  # as a catalog setting: SQLite files in the data folder, the default
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


class ConfigurationError(ValueError):
    """A setting (environment variable or argument) SmartLab cannot use, and why."""


def config_path() -> Path:
    """The config file: ``SMARTLAB_CONFIG``, else ``smartlab.toml`` in the XDG config folder."""
    if explicit := os.environ.get("SMARTLAB_CONFIG"):
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(xdg) / CONFIG_FILENAME


def read_config(path: Path | None = None) -> dict[str, Any]:
    """The config file's tables; empty if the default file does not exist.

    A file named explicitly (argument or ``SMARTLAB_CONFIG``) must exist and parse.
    """
    explicit = path is not None or "SMARTLAB_CONFIG" in os.environ
    path = Path(path) if path is not None else config_path()
    if not path.exists():
        if explicit:
            raise ConfigurationError(f"config file {path} does not exist")
        return {}
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"cannot read config file {path}: {exc}") from None


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
    """The Tiled server: ``SMARTLAB_TILED_URI``, else the ``SMARTLAB_TILED_PROFILE``'s, or None."""
    if explicit := os.environ.get("SMARTLAB_TILED_URI"):
        return explicit
    if profile := os.environ.get("SMARTLAB_TILED_PROFILE"):
        return tiled_profile_uri(profile)
    return None


def tiled_profile_uri(name: str) -> str:
    """The ``uri`` of the Tiled client profile ``name``, as ``tiled profile list`` finds it."""
    from tiled.profiles import load_profiles, paths

    profiles = load_profiles()
    if name not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise ConfigurationError(
            f"SMARTLAB_TILED_PROFILE={name!r}: no such Tiled profile (known: {known}; "
            f"searched {', '.join(str(path) for path in paths)})"
        )
    source, content = profiles[name]
    if not content.get("uri"):
        raise ConfigurationError(
            f"SMARTLAB_TILED_PROFILE={name!r}: the profile in {source} has no 'uri' "
            "(SmartLab needs a server over HTTP, not a 'direct' one)"
        )
    return content["uri"]


def compute() -> str | None:
    """The compute engine named by ``SMARTLAB_COMPUTE``, or None: analyse in the worker."""
    return os.environ.get("SMARTLAB_COMPUTE") or None


def worker_threads() -> int | None:
    """Threads the worker process' torch and BLAS may use; None: leave ``OMP_NUM_THREADS`` be.

    ``SMARTLAB_WORKER_THREADS`` if set; otherwise, unless ``OMP_NUM_THREADS``
    is set, half the CPU cores (at least 1). The worker shares the machine with
    the RunEngine and the Tiled server during a scan: torch's default, a thread
    per core, made its threads wait on each other there (on 2 cores phase_cnn
    kept up with 46 frames/s with one thread, and fell 1.2-1.5 s behind with two).
    """
    value = os.environ.get("SMARTLAB_WORKER_THREADS")
    if value is not None:
        try:
            threads = int(value)
        except ValueError:
            threads = 0
        if threads < 1:
            raise ConfigurationError(
                f"SMARTLAB_WORKER_THREADS={value!r}: give a whole number of threads, 1 or more"
            )
        return threads
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, (os.cpu_count() or 2) // 2)


def data_roots() -> list[str] | None:
    """The folders named by ``SMARTLAB_DATA_ROOTS``, or None if it is unset.

    Unset, an in-process ``SmartLab`` reads detector files anywhere but a Tiled
    server's own folder (its documents come from the user's own RunEngine),
    and ``smartlab worker`` reads none (see ``smartlab_plugins/assembly/external.py``).
    """
    value = os.environ.get("SMARTLAB_DATA_ROOTS")
    if value is None:
        return None
    return [part for part in value.split(os.pathsep) if part]


def stored_api_key(data_dir: Path | None = None) -> str | None:
    """The key ``smartlab serve`` stored in ``data_dir``, or None if there is none."""
    path = Path(data_dir or default_data_dir()) / API_KEY_FILENAME
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def api_key(data_dir: Path | None = None) -> str | None:
    """The API key clients use: ``SMARTLAB_API_KEY``, ``TILED_API_KEY``, else the stored one."""
    return (
        os.environ.get("SMARTLAB_API_KEY")
        or os.environ.get("TILED_API_KEY")
        or stored_api_key(data_dir)
    )


#: The shortest API key a SmartLab server accepts (generated ones have 48 characters).
MIN_API_KEY_LENGTH = 16


def shown_key(key: str) -> str:
    """An API key as it may be printed or logged: its first four characters."""
    return f"{key[:4]}... ({len(key)} characters)"


def server_api_key(data_dir: Path) -> tuple[str, bool]:
    """The key the embedded server requires, and whether it was generated now.

    ``SMARTLAB_API_KEY`` wins; otherwise the key stored in ``data_dir`` is
    reused, and on first start a new one is generated and stored there with
    user-only permissions (0600).
    """
    if explicit := os.environ.get("SMARTLAB_API_KEY"):
        if not explicit.isalnum() or len(explicit) < MIN_API_KEY_LENGTH:
            raise ConfigurationError(
                f"SMARTLAB_API_KEY must be at least {MIN_API_KEY_LENGTH} letters and digits "
                "(Tiled refuses other characters, and a short key is guessed); make one with: "
                'python -c "import secrets; print(secrets.token_hex(24))"'
            )
        return explicit, False
    if stored := stored_api_key(data_dir):
        return stored, False
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_hex(24)
    path = data_dir / API_KEY_FILENAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key, True


def catalog_uri(
    option: str | None = None, config_file: Path | None = None
) -> tuple[str | None, str]:
    """The PostgreSQL database ``smartlab serve`` keeps its catalog and tables in, and where
    that setting came from (for messages); None: SQLite files in the data folder.

    ``option`` (``--catalog``) wins, then ``SMARTLAB_CATALOG_URI``, then ``catalog`` in the
    ``[server]`` table of the config file (``config_file``, else :func:`config_path`). The
    value ``sqlite`` asks for the default explicitly, over what comes after it.
    """
    if option:
        value, source = option, "--catalog"
    elif explicit := os.environ.get("SMARTLAB_CATALOG_URI"):
        value, source = explicit, "SMARTLAB_CATALOG_URI"
    else:
        value = read_config(config_file).get("server", {}).get("catalog")
        source = f"[server] catalog in {config_file or config_path()}"
        if value is not None and not isinstance(value, str):
            raise ConfigurationError(f"{source}: expected a URI string, got {value!r}")
    if not value or value == SQLITE_CATALOG:
        return None, source if value else "default"
    return value, source


def redact(uri: str) -> str:
    """A URI with its password shown as ``***``: the only form of a URI that is logged or
    printed (database and broker URIs alike)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(uri).render_as_string(hide_password=True)
    except ArgumentError:
        return "(a string that is not a URI)"


def scrub(text: str, uri: str) -> str:
    """``text`` (an error message, say) with the password of ``uri`` replaced by ``***``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        password = make_url(uri).password
    except ArgumentError:
        return text
    return text.replace(str(password), "***") if password else text
