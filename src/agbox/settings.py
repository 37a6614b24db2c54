"""Settings of the platform, resolved once (argument > environment > default) and passed down.

Library code never reads ``os.environ`` itself: ``Settings.from_env`` is called by the CLI and by the
embedded client, and everything below receives the resulting object.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path


def default_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME", "/tmp")) / ".local" / "share")
    return Path(base) / "agbox"


def _flag(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "on", "true", "yes", "allow"):
        return True
    if value in ("0", "off", "false", "no", "deny"):
        return False
    raise ValueError(f"{name} must be on or off, not {raw!r}")


@dataclasses.dataclass(frozen=True)
class Settings:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8390
    api_key: str | None = None
    # Idle release when createSession gives no timeout, and the hard cap on any session's life.
    default_idle_timeout_s: int = 300
    max_lifetime_s: int = 1800
    max_sessions: int = 2000
    max_label_count: int = 64
    max_label_bytes: int = 4096
    max_request_bytes: int = 64 * 1024 * 1024
    # Output of one shell call beyond this is cut off with a marker.
    max_command_output_bytes: int = 4 * 1024 * 1024
    link_port_min: int = 30100
    link_port_max: int = 30199
    # The bulk file listener (services/bulk_listener.py): 0 = any free port, -1 = off (files then
    # move through the main port only).
    bulk_port: int = 0
    # The externally visible base URL of this server (e.g. behind a reverse proxy); None = http://host:port.
    public_url: str | None = None
    tls_enabled: bool = False
    runtime: str = "local"
    # Started sandboxes kept ready per image (0 = start each sandbox on demand), and the images to
    # warm at start-up (others warm after their first create).
    warm_pool_size: int = 2
    prewarm_images: tuple[str, ...] = ("agb-code-space-1",)
    # Extra image files (TOML); an image here with a built-in id replaces it (e.g. other limits).
    images_dir: Path | None = None
    # The language model behind the browser tools act/observe/extract: an OpenAI-compatible
    # chat-completions endpoint (base URL, model name, key). None = those tools say no model is configured.
    browser_model_url: str | None = None
    browser_model: str = "gpt-4o-mini"
    browser_model_api_key: str | None = dataclasses.field(default=None, repr=False)
    reap_interval_s: float = 1.0
    # How long a server trusts what it read about an API key (revocation takes effect within this).
    key_cache_ttl_s: float = 1.0
    # Limits per API key (None = none; `agbox keys set` overrides them per key): see services/limits.py.
    key_max_sessions: int | None = None
    key_max_memory_bytes: int | None = None
    key_max_cpus: float | None = None
    key_max_context_bytes: int | None = None
    key_requests_per_s: float | None = None
    key_max_streams: int | None = None
    # Where state lives: None = SQLite in the data dir; "postgresql://user:pw@host:port/db" = PostgreSQL,
    # which several control-plane replicas can share.
    store_url: str | None = None
    # runtime = "ray": the cluster to join (host:port of the head's GCS, or "auto"), and where each
    # node keeps its sandboxes' files (a path on that node; default <data dir>/nodes).
    ray_address: str | None = None
    # Context blobs (and the pre-signed URL secret) on a path every replica reaches; None = in the data dir.
    blob_dir: Path | None = None
    node_data_dir: str | None = None
    # Screen of a desktop session (images with the computer tools), WIDTHxHEIGHTxDEPTH; createSession's
    # desktopSize overrides it per session.
    desktop_size: str = "1920x1080x24"
    # Sandbox networks (runtime/network.py): off = loopback only. The pool sandbox addresses come from,
    # the upstream DNS servers (empty: the host's /etc/resolv.conf), private ranges sandboxes may reach,
    # more ranges no sandbox may reach (e.g. a LAN outside the private ranges), and whether a session
    # that does not say gets outbound internet.
    network: bool = True
    network_pool: str = "10.201.0.0/16"
    network_dns: tuple[str, ...] = ()
    network_open_ranges: tuple[str, ...] = ()
    network_deny_ranges: tuple[str, ...] = ()
    network_internet: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {"data_dir": default_data_dir(env)}
        mapping: dict[str, tuple[str, type]] = {
            "AGBOX_DATA_DIR": ("data_dir", Path),
            "AGBOX_HOST": ("host", str),
            "AGBOX_PORT": ("port", int),
            "AGBOX_API_KEY": ("api_key", str),
            "AGBOX_DEFAULT_IDLE_TIMEOUT": ("default_idle_timeout_s", int),
            "AGBOX_MAX_LIFETIME": ("max_lifetime_s", int),
            "AGBOX_MAX_SESSIONS": ("max_sessions", int),
            "AGBOX_PUBLIC_URL": ("public_url", str),
            "AGBOX_LINK_PORT_MIN": ("link_port_min", int),
            "AGBOX_LINK_PORT_MAX": ("link_port_max", int),
            "AGBOX_BULK_PORT": ("bulk_port", int),
            "AGBOX_RUNTIME": ("runtime", str),
            "AGBOX_IMAGES_DIR": ("images_dir", Path),
            "AGBOX_WARM_POOL": ("warm_pool_size", int),
            "AGBOX_BROWSER_MODEL_URL": ("browser_model_url", str),
            "AGBOX_BROWSER_MODEL": ("browser_model", str),
            "AGBOX_BROWSER_MODEL_API_KEY": ("browser_model_api_key", str),
            "AGBOX_KEY_MAX_SESSIONS": ("key_max_sessions", int),
            "AGBOX_KEY_MAX_MEMORY_BYTES": ("key_max_memory_bytes", int),
            "AGBOX_KEY_MAX_CPUS": ("key_max_cpus", float),
            "AGBOX_KEY_MAX_CONTEXT_BYTES": ("key_max_context_bytes", int),
            "AGBOX_KEY_REQUESTS_PER_S": ("key_requests_per_s", float),
            "AGBOX_KEY_MAX_STREAMS": ("key_max_streams", int),
            "AGBOX_STORE": ("store_url", str),
            "AGBOX_RAY_ADDRESS": ("ray_address", str),
            "AGBOX_BLOB_DIR": ("blob_dir", Path),
            "AGBOX_NODE_DATA_DIR": ("node_data_dir", str),
            "AGBOX_DESKTOP_SIZE": ("desktop_size", str),
        }
        for var, (field, kind) in mapping.items():
            raw = env.get(var)
            if raw:
                values[field] = kind(raw)
        if env.get("AGBOX_PREWARM_IMAGES") is not None:
            values["prewarm_images"] = tuple(i for i in env["AGBOX_PREWARM_IMAGES"].split(",") if i.strip())
        for var, field in (("AGBOX_NETWORK", "network"), ("AGBOX_NETWORK_INTERNET", "network_internet")):
            if env.get(var):
                values[field] = _flag(var, env[var])
        for var, field in (("AGBOX_NETWORK_DNS", "network_dns"), ("AGBOX_NETWORK_OPEN_RANGES", "network_open_ranges"),
                           ("AGBOX_NETWORK_DENY_RANGES", "network_deny_ranges")):
            if env.get(var) is not None:
                values[field] = tuple(i.strip() for i in env[var].split(",") if i.strip())
        if env.get("AGBOX_NETWORK_POOL"):
            values["network_pool"] = env["AGBOX_NETWORK_POOL"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "data_dir" in values:
            values["data_dir"] = Path(str(values["data_dir"])).expanduser().resolve()
        return cls(**values)  # type: ignore[arg-type]

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{self.host}:{self.port}"
