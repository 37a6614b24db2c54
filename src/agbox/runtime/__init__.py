"""Sandbox mechanisms behind one small interface (``base.Runtime``); ``local`` uses bubblewrap."""
