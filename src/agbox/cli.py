"""``agbox`` command line.

Operator commands work on a data dir (``serve``, ``keys``, ``sessions``); user commands (``create``,
``exec``, ``shell``, ``ls``, ``logs``, ``rm``) talk to a running server through the SDK, like any other client.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from agbox.errors import AgboxError
from agbox.logs import configure as configure_logs
from agbox.settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        data_dir=getattr(args, "data_dir", None),
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        api_key=getattr(args, "api_key", None),
        public_url=getattr(args, "public_url", None),
        store_url=getattr(args, "store", None),
        runtime=getattr(args, "runtime", None),
        ray_address=getattr(args, "ray_address", None),
        node_data_dir=getattr(args, "node_data_dir", None),
        blob_dir=getattr(args, "blob_dir", None),
    )


def _store(settings: Settings, must_exist: bool = True):  # type: ignore[no-untyped-def]
    from agbox.store.factory import open_store

    if must_exist and not settings.store_url and not settings.data_dir.is_dir():
        # Opening SQLite would create an empty database and print nothing (or a key no server accepts).
        raise CliError(f"no agbox data dir at {settings.data_dir}: pass the --data-dir of your server "
                       "(or set AGBOX_DATA_DIR); `agbox serve` creates it")
    return open_store(settings)


class CliError(Exception):
    """A user mistake the CLI reports in one line (exit status 2)."""


def _ensure_key(settings: Settings) -> str:
    """The key to print: --api-key / AGBOX_API_KEY if given, else the one kept in the data dir."""
    from agbox.services.keys import KeyService

    store = _store(settings, must_exist=False)
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
                            access_log=False, timeout_graceful_shutdown=10, ws_max_size=64 * 1024 * 1024,
                            # /browser/init carries fingerprints (~10 KB) in its query string
                            h11_max_incomplete_event_size=256 * 1024)
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
            labels = ",".join(f"{k}={v}" for k, v in sorted(record.labels.items())) or "-"
            print(f"{record.id}\t{record.status.value}\t{record.image_id}\t{labels}\t{record.owner}\t{created}\t"
                  f"{record.finish_reason}")
        return 0
    finally:
        store.close()


# ---- user commands: a client of a running server, through the SDK -------------------------------------


def _client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from agbox.client.agb import AGB

    endpoint = args.endpoint or os.environ.get("AGB_ENDPOINT")
    api_key = args.api_key or os.environ.get("AGB_API_KEY")
    if not endpoint:
        # An embedded platform ends its sandboxes when this process exits, so a session made here
        # would be gone before the next command.
        raise CliError("set AGB_ENDPOINT (or --endpoint) to a running `agbox serve`; sessions of an "
                       "embedded platform end with the process that started them")
    if not api_key:
        raise CliError("set AGB_API_KEY (or --api-key): `agbox serve` prints it")
    return AGB(api_key=api_key, endpoint=endpoint)


def _labels(pairs: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--label wants KEY=VALUE, got {pair!r}")
        labels[key] = value
    return labels


def cmd_create(args: argparse.Namespace) -> int:
    from agbox.client.agb import CreateSessionParams

    with _client(args) as agb:
        params = CreateSessionParams(image_id=args.image, labels=_labels(args.label),
                                     idle_release_timeout=args.timeout)
        result = agb.create(params)
        if not result.success or result.session is None:
            print(f"agbox: create failed: {result.error_message}", file=sys.stderr)
            return 1
        print(result.session.session_id)
        return 0


def _session(agb, session_id: str):  # type: ignore[no-untyped-def]
    result = agb.get(session_id)
    if not result.success or result.session is None:
        raise CliError(result.error_message or f"no session {session_id}")
    return result.session


def cmd_exec(args: argparse.Namespace) -> int:
    import shlex

    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not command:
        raise CliError("exec needs a command: agbox exec SESSION -- CMD [ARG...]")
    line = command[0] if len(command) == 1 else shlex.join(command)
    with _client(args) as agb:
        session = _session(agb, args.session_id)
        result = session.command.execute(line, timeout_ms=args.timeout_ms, cwd=args.cwd)
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        if result.exit_code < 0 or (not result.success and not result.stdout and not result.stderr):
            print(f"agbox: {result.error_message}", file=sys.stderr)
        return result.exit_code if result.exit_code >= 0 else 1


def _remote(spec: str) -> tuple[str, str] | None:
    """``SESSION:PATH`` -> (session, path); None for a local path (one with a '/' before any ':')."""
    head, sep, tail = spec.partition(":")
    if not sep or not head or "/" in head or not tail:
        return None
    return head, tail


class ProgressLine:
    """``bytes  MB/s`` on one stderr line, rewritten in place (what ``agbox cp`` shows)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = time.monotonic()
        self.shown = False

    def __call__(self, done: int, total: int | None) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        share = f" {100 * done / total:5.1f}% of {_size(total)}" if total else ""
        sys.stderr.write(f"\r{self.label}: {_size(done)}{share}  {done / elapsed / 1e6:7.1f} MB/s ")
        sys.stderr.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def cmd_cp(args: argparse.Namespace) -> int:
    source, target = _remote(args.source), _remote(args.target)
    if (source is None) == (target is None):
        raise CliError("cp copies between this machine and a session: agbox cp LOCAL SESSION:PATH "
                       "or agbox cp SESSION:PATH LOCAL")
    show = args.progress or (not args.no_progress and sys.stderr.isatty())
    with _client(args) as agb:
        if target is not None:
            session_id, path = target
            local = args.source
            if local != "-" and not os.path.isfile(local):
                raise CliError(f"no such local file: {local}")
        else:
            assert source is not None
            session_id, path = source
            local = args.target
            if local != "-" and os.path.isdir(local):
                local = os.path.join(local, path.rstrip("/").rsplit("/", 1)[-1])
        session = _session(agb, session_id)
        progress = ProgressLine(f"{args.source} -> {args.target}") if show else None
        try:
            if target is not None:
                up = session.file.upload_stream(sys.stdin.buffer if local == "-" else local, path,
                                                progress=progress)
                ok, message = up.success, up.error_message
            else:
                down = session.file.download_stream(path, sys.stdout.buffer if local == "-" else local,
                                                    progress=progress)
                ok, message = down.success, down.error_message
        finally:
            if progress is not None:
                progress.finish()
        if not ok:
            print(f"agbox: cp failed: {message}", file=sys.stderr)
            return 1
        return 0


def cmd_ls(args: argparse.Namespace) -> int:
    with _client(args) as agb:
        rows: list[tuple[str, str, str]] = []
        page = 1
        while True:
            listed = agb.list(labels=_labels(args.label), page=page, limit=100)
            if not listed.success:
                raise CliError(listed.error_message)
            for session_id in listed.session_ids:
                session = _session(agb, session_id)
                status = session.get_status().status or "?"
                labels = session.get_labels()
                shown = ",".join(f"{k}={v}" for k, v in sorted((labels.data or {}).items())) if labels.success else "?"
                rows.append((session_id, status, shown or "-"))
            if not listed.next_token:
                break
            page += 1
        width = max([len(r[0]) for r in rows] + [10])
        print(f"{'SESSION':<{width}}  {'STATUS':<9}  LABELS")
        for session_id, status, labels_text in rows:
            print(f"{session_id:<{width}}  {status:<9}  {labels_text}")
        return 0


def cmd_rm(args: argparse.Namespace) -> int:
    failed = 0
    with _client(args) as agb:
        for session_id in args.session_ids:
            got = agb.get(session_id)
            if not got.success or got.session is None:
                print(f"agbox: {session_id}: {got.error_message}", file=sys.stderr)
                failed += 1
                continue
            deleted = got.session.delete()
            if deleted.success:
                print(session_id)
            else:
                print(f"agbox: {session_id}: {deleted.error_message}", file=sys.stderr)
                failed += 1
    return 1 if failed else 0


def _log_line(entry, with_date: bool) -> str:  # type: ignore[no-untyped-def]
    moment = datetime.datetime.fromtimestamp(entry.time)
    when = moment.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S") + f".{moment.microsecond // 1000:03d}"
    if entry.exit_code is not None:
        outcome = f"exit {entry.exit_code}"
    else:
        outcome = "ok" if entry.ok else "error"
    repeat = f" (x{entry.repeat})" if entry.repeat > 1 else ""
    error = f"  [{entry.error}]" if entry.error else ""
    return (f"{when}  {entry.tool:<14} {outcome:<8} {entry.duration_ms:>9.1f} ms  {entry.summary}{repeat}"
            f"{error}")


def cmd_logs(args: argparse.Namespace) -> int:
    import time

    if args.lines < 1:
        raise CliError("--lines must be at least 1")
    with _client(args) as agb:
        result = agb.get_session_logs(args.session_id, limit=min(args.lines, 1000))
        if not result.success:
            raise CliError(result.error_message)
        shown = 0
        while True:
            for entry in result.entries:
                print(_log_line(entry, not args.follow), flush=args.follow)
                shown += 1
            if not args.follow or result.status == "FINISH":
                break
            # --follow: poll for what came since (a repeat of the last call comes back with a new seq).
            time.sleep(args.interval)
            result = agb.get_session_logs(args.session_id, after_seq=result.last_seq)
            if not result.success:
                raise CliError(result.error_message)
        if not shown and not args.follow:
            print(f"agbox: no tool calls recorded for {args.session_id} yet", file=sys.stderr)
        return 0


def cmd_shell(args: argparse.Namespace) -> int:
    import select
    import shutil
    import termios
    import tty

    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    stdin_fd, out = sys.stdin.fileno(), sys.stdout.buffer

    def show(chunk: bytes) -> None:
        out.write(chunk)
        out.flush()

    with _client(args) as agb:
        session = _session(agb, args.session_id)
        size = shutil.get_terminal_size()
        terminal = session.pty.create(command or None, cols=size.columns, rows=size.lines, on_data=show)
        interactive = os.isatty(stdin_fd)
        saved = termios.tcgetattr(stdin_fd) if interactive else None
        previous_winch = signal.signal(signal.SIGWINCH, lambda *_: terminal.resize(*shutil.get_terminal_size()))
        try:
            if interactive:
                # Raw: keys (Ctrl-C too) go to the session's terminal. TCSANOW keeps what was typed ahead.
                tty.setraw(stdin_fd, termios.TCSANOW)
            while terminal.running:
                ready, _, _ = select.select([stdin_fd], [], [], 0.1)
                if not ready:
                    continue
                typed = os.read(stdin_fd, 4096)
                if not typed:
                    break
                terminal.send_input(typed)
            ended = terminal.wait(None if terminal.running else 30)
        finally:
            signal.signal(signal.SIGWINCH, previous_winch)
            if saved is not None:
                termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
            terminal.close()
        if ended.exit_code < 0:
            print(f"agbox: {ended.error_message}", file=sys.stderr)
            return 1
        return int(ended.exit_code)
def node_resources(slots: int, memory_mb: int, images: str) -> dict[str, float]:
    """The Ray custom resources an agbox node declares (read by runtime/ray_cluster.py)."""
    from agbox.runtime.ray_node import IMAGE_RESOURCE_PREFIX, MEMORY_RESOURCE, SLOTS_RESOURCE

    resources: dict[str, float] = {SLOTS_RESOURCE: float(slots)}
    if memory_mb:
        resources[MEMORY_RESOURCE] = float(memory_mb)
    for image in filter(None, (i.strip() for i in images.split(","))):
        resources[IMAGE_RESOURCE_PREFIX + image] = 1.0
    return resources


def cmd_node(args: argparse.Namespace) -> int:
    import json
    import shutil

    if args.slots < 1:
        print("--slots must be at least 1", file=sys.stderr)
        return 2
    ray_cli = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    argv = [ray_cli, "start", "--block", "--resources", json.dumps(node_resources(args.slots, args.memory_mb,
                                                                                  args.images))]
    if args.head:
        argv += ["--head", "--port", args.address.rsplit(":", 1)[-1], "--include-dashboard=false"]
    else:
        argv += ["--address", args.address]
    if args.node_ip_address:
        argv += ["--node-ip-address", args.node_ip_address]
    if args.dry_run:
        print(" ".join(argv))
        return 0
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.execv(argv[0], argv)  # noqa: S606 - becomes the ray node process


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agbox", description="Self-hosted AGB-compatible sandboxes for AI agents")
    parser.add_argument("--version", action="version", version=f"agbox {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def data_dir_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", type=Path, default=None, help="state directory (default: per-user data dir)")
        p.add_argument("--store", default=None, metavar="URL",
                       help="postgresql://user:password@host:port/db (or AGBOX_STORE); default SQLite in the data dir")

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8390)")
    serve.add_argument("--api-key", default=None, help="fix the API key (or set AGBOX_API_KEY)")
    serve.add_argument("--public-url", default=None, help="base URL clients use, e.g. behind a reverse proxy")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", default="text", choices=["text", "json"],
                       help="json: one object per line, with the requestId of the wire operation")
    serve.add_argument("--runtime", default=None, choices=["local", "ray"],
                       help="where sandboxes run: this machine (default) or the nodes of a Ray cluster")
    serve.add_argument("--ray-address", default=None, help="Ray head address host:port (or AGBOX_RAY_ADDRESS)")
    serve.add_argument("--node-data-dir", default=None, help="ray runtime: per-node state path on each node")
    serve.add_argument("--blob-dir", type=Path, default=None,
                       help="context blobs on a path all replicas share (or AGBOX_BLOB_DIR); default in the data dir")
    data_dir_option(serve)
    serve.set_defaults(func=cmd_serve)

    node = sub.add_parser("node", help="join this machine to a Ray cluster as an agbox node (runs `ray start`)")
    node.add_argument("--address", required=True, help="the Ray head, host:port")
    node.add_argument("--head", action="store_true", help="start the head instead (then --address is its port)")
    node.add_argument("--slots", type=int, default=64, help="sandboxes this node may hold")
    node.add_argument("--memory-mb", type=int, default=0, help="memory for sandboxes (default: all the node has)")
    node.add_argument("--images", default="", help="comma-separated image ids this node offers (default: all)")
    node.add_argument("--node-ip-address", default=None, help="the address other machines reach this node on")
    node.add_argument("--dry-run", action="store_true", help="print the ray start command instead of running it")
    node.set_defaults(func=cmd_node)

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

    def client_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--endpoint", default=None, help="server URL (default: AGB_ENDPOINT)")
        p.add_argument("--api-key", default=None, help="API key (default: AGB_API_KEY)")

    create = sub.add_parser("create", help="create a session and print its id")
    create.add_argument("--image", default="agb-code-space-1")
    create.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument("--timeout", type=int, default=None, help="idle release after this many seconds")
    client_options(create)
    create.set_defaults(func=cmd_create)

    exec_ = sub.add_parser("exec", help="run a command in a session; its exit status becomes ours")
    exec_.add_argument("session_id")
    exec_.add_argument("--cwd", default=None)
    exec_.add_argument("--timeout-ms", type=int, default=60_000)
    exec_.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")
    client_options(exec_)
    exec_.set_defaults(func=cmd_exec)

    ls = sub.add_parser("ls", help="list your active sessions with their labels")
    ls.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="filter")
    client_options(ls)
    ls.set_defaults(func=cmd_ls)

    shell = sub.add_parser("shell", help="an interactive terminal in a session (a login shell, or -- CMD)")
    shell.add_argument("session_id")
    shell.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")
    client_options(shell)
    shell.set_defaults(func=cmd_shell)

    cp = sub.add_parser("cp", help="copy a file into or out of a session (LOCAL SESSION:PATH, SESSION:PATH LOCAL; "
                                   "'-' is stdin/stdout)")
    cp.add_argument("source")
    cp.add_argument("target")
    cp.add_argument("--progress", action="store_true", help="show bytes and MB/s on stderr (default: when a tty)")
    cp.add_argument("--no-progress", action="store_true", help="never show progress")
    client_options(cp)
    cp.set_defaults(func=cmd_cp)

    logs = sub.add_parser("logs", help="a session's recent commands and tool calls (newest last)")
    logs.add_argument("session_id")
    logs.add_argument("-n", "--lines", type=int, default=200, help="show at most this many (default 200)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new calls until the session ends")
    logs.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)
    client_options(logs)
    logs.set_defaults(func=cmd_logs)

    rm = sub.add_parser("rm", help="delete sessions")
    rm.add_argument("session_ids", nargs="+")
    client_options(rm)
    rm.set_defaults(func=cmd_rm)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agbox")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.func is cmd_serve:
        detach_from_terminal()
    configure_logs(getattr(args, "log_level", "warning"), getattr(args, "log_format", "text"))
    try:
        return int(args.func(args))
    except AgboxError as exc:
        print(f"agbox: {exc.message}", file=sys.stderr)
        return 1
    except CliError as exc:
        print(f"agbox: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
