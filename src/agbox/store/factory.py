"""Opens the store the settings name: SQLite in the data dir (default) or PostgreSQL (``--store``)."""

from __future__ import annotations

from agbox.errors import AgboxError
from agbox.settings import Settings
from agbox.store.base import Store
from agbox.store.contexts import ContextStore, SqliteContextStore
from agbox.store.postgres import PostgresContextStore, PostgresDatabase, PostgresStore, is_postgres_url
from agbox.store.sqlite import SqliteStore


def open_store(settings: Settings) -> Store:
    url = settings.store_url
    if not url or url == "sqlite":
        return SqliteStore(settings.data_dir / "agbox.db")
    if is_postgres_url(url):
        return PostgresStore(PostgresDatabase(url))
    raise AgboxError(f"unsupported store {url!r}: use a postgresql://… URL, or leave it unset for SQLite")


def open_context_store(settings: Settings, store: Store) -> ContextStore:
    """Context records live beside the sessions: same SQLite file, or the same PostgreSQL pool."""
    if isinstance(store, PostgresStore):
        return PostgresContextStore(store.db)
    return SqliteContextStore(settings.data_dir / "agbox.db")
