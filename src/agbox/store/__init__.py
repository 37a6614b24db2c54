"""Persistence behind one interface (``base.Store``); SQLite by default."""
