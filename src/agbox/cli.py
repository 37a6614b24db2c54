"""``agbox`` command line: serve, keys, sessions."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from agbox.errors import AgboxError
from agbox.settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        data_dir=getattr(args, "data_dir", None),
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        api_key=getattr(args, "api_key", None),
        public_url=getattr(args, "public_url", None),
    )


def _store(settings: Settings):  # type: ignore[no-untyped-def]
    from agbox.store.sqlite import SqliteStore

    return SqliteStore(settings.data_dir / "agbox.db")


def _ensure_key(settings: Settings) -> str:
    """The key to print: --api-key / AGBOX_API_KEY if given, else the one kept in the data dir."""
    from agbox.services.keys import KeyService

    store = _store(settings)
    try:
        keys = KeyService(store)
        if settings.api_key:
            keys.create("configured", settings.api_key)
            return settings.api_key
        key_file = settings.data_dir / "api_key"
        if key_file.exists():
            key = key_file.read_text().strip()
            keys.create("default", key)
            return key
        _, key = keys.create("default")
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
        return key
    finally:
        store.close()


def detach_from_terminal() -> None:
    """Make the server indifferent to how it was started (``agbox serve &`` from an interactive shell,
    nohup, systemd). A background job of a terminal is stopped by SIGTTOU when it writes to the
    terminal under ``stty tostop`` (and by SIGTTIN if anything reads it), which would freeze the
    server and every sandbox with it: ignore both (writes then simply go through). Nothing reads
    our stdin, so a terminal there is replaced by /dev/null, which every child inherits too."""
    for sig in (signal.SIGTTOU, signal.SIGTTIN):
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        if os.isatty(0):
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    _GracefulServer = _graceful_server_class()
    from agbox.server.app import create_app
    from agbox.services.platform import Platform

    settings = _settings(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    key = _ensure_key(settings)
    platform = Platform(settings)

    async def announce() -> None:
        endpoint = f"http://{settings.host}:{settings.port}"
        print(f"agbox serving on {endpoint} (data dir {settings.data_dir})", flush=True)
        print(f"API key: {key}", flush=True)
        print("Point the official SDK at it:", flush=True)
        print(f"  export AGB_ENDPOINT={endpoint}", flush=True)
        print(f"  export AGB_API_KEY={key}", flush=True)

    app = create_app(platform, on_ready=announce)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=args.log_level,
                            access_log=False, timeout_graceful_shutdown=10, ws_max_size=64 * 1024 * 1024)
    server = _GracefulServer(config)
    server.run()
    return 0


def _graceful_server_class() -> type:
    import uvicorn

    class GracefulServer(uvicorn.Server):  # type: ignore[misc]
        """SIGINT/SIGTERM stop the server gracefully (every sandbox ended) and exit 0, instead of
        uvicorn's default of re-raising the signal after shutdown."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return GracefulServer


def _limit_changes(args: argparse.Namespace) -> dict[str, float | None]:
    from agbox.services.limits import LIMIT_NAMES, parse_limit

    return {name: parse_limit(name, raw) for name in LIMIT_NAMES
            if (raw := getattr(args, name, None)) is not None}


def cmd_keys(args: argparse.Namespace) -> int:
    from agbox.services.keys import KeyService

    settings = _settings(args)
    store = _store(settings)
    try:
        keys = KeyService(store)
        changes = _limit_changes(args)
        if args.action == "create":
            record, key = keys.create(args.name)
            if changes:
                keys.set_limits(record.id, changes)
            print(f"{record.id}\t{key}")
            print("Keep the key: it is stored hashed and cannot be shown again.", file=sys.stderr)
        elif args.action == "set":
            if not args.key_id or not changes:
                print("keys set needs a key id and at least one limit, e.g. --max-sessions 10", file=sys.stderr)
                return 2
            limits = keys.set_limits(args.key_id, changes)
            if limits is None:
                print(f"no key {args.key_id}", file=sys.stderr)
                return 1
            print(f"{args.key_id}\t" + (" ".join(f"{k}={v:g}" for k, v in sorted(limits.items())) or "defaults"))
        elif args.action == "list":
            for record in keys.list():
                state = "revoked" if record.revoked_at else "active"
                created = datetime.datetime.fromtimestamp(record.created_at).isoformat(timespec="seconds")
                shown = " ".join(f"{k}={v:g}" for k, v in sorted(record.limits.items())) or "defaults"
                print(f"{record.id}\t{record.name}\t{record.prefix}…\t{state}\t{created}\t{shown}")
        elif args.action == "revoke":
            if not args.key_id:
                print("keys revoke needs a key id (see `agbox keys list`)", file=sys.stderr)
                return 2
            if not keys.revoke(args.key_id):
                print(f"no active key {args.key_id}", file=sys.stderr)
                return 1
            print(f"revoked {args.key_id}")
        return 0
    finally:
        store.close()


def cmd_sessions(args: argparse.Namespace) -> int:
    from agbox.models import ACTIVE_STATUSES

    settings = _settings(args)
    store = _store(settings)
    try:
        statuses = None if args.all else list(ACTIVE_STATUSES)
        for record in store.sessions(statuses=statuses):
            created = datetime.datetime.fromtimestamp(record.created_at).isoformat(timespec="seconds")
            print(f"{record.id}\t{record.status.value}\t{record.image_id}\t{record.owner}\t{created}\t"
                  f"{record.finish_reason}")
        return 0
    finally:
        store.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agbox", description="Self-hosted AGB-compatible sandboxes for AI agents")
    sub = parser.add_subparsers(dest="command", required=True)

    def data_dir_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", type=Path, default=None, help="state directory (default: per-user data dir)")

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8390)")
    serve.add_argument("--api-key", default=None, help="fix the API key (or set AGBOX_API_KEY)")
    serve.add_argument("--public-url", default=None, help="base URL clients use, e.g. behind a reverse proxy")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    data_dir_option(serve)
    serve.set_defaults(func=cmd_serve)

    keys = sub.add_parser("keys", help="manage API keys")
    keys.add_argument("action", choices=["create", "list", "set", "revoke"])
    keys.add_argument("key_id", nargs="?")
    keys.add_argument("--name", default="cli")
    limit_help = "per-key limit (a number; sizes take K/M/G; 'default' drops the override)"
    for flag, name in (("--max-sessions", "max_sessions"), ("--max-memory", "max_memory_bytes"),
                       ("--max-cpus", "max_cpus"), ("--max-context-bytes", "max_context_bytes"),
                       ("--requests-per-s", "requests_per_s"), ("--max-streams", "max_streams")):
        keys.add_argument(flag, dest=name, default=None, help=limit_help)
    data_dir_option(keys)
    keys.set_defaults(func=cmd_keys)

    sessions = sub.add_parser("sessions", help="inspect sessions")
    sessions.add_argument("action", choices=["list"])
    sessions.add_argument("--all", action="store_true", help="include ended sessions")
    data_dir_option(sessions)
    sessions.set_defaults(func=cmd_sessions)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.func is cmd_serve:
        detach_from_terminal()
    logging.basicConfig(level=getattr(logging, getattr(args, "log_level", "info").upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except AgboxError as exc:
        print(f"agbox: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
