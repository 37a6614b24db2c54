"""The key space of context files and the sync policy (AGB's ``SyncPolicy``) that selects from it.

Key space (AGB's): a context file is keyed by its absolute path in the sandbox it was synced from.
A session that binds a context at ``/home/user/data`` writes ``/home/user/data/a.txt`` as the key
``/home/user/data/a.txt`` and receives, at that mount, the files whose keys lie under it. A mapping
policy (``mappingPolicy.path``) names another key root: the files under that root appear at the
session's mount, and what the session syncs back goes under that root again.

Paths inside a policy (white lists, their excludes, recycle paths) are relative to the mount.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from agbox.errors import InvalidRequestError
from agbox.wirejson import clip, loads

LIFECYCLE_DAYS: dict[str, int | None] = {
    "Lifecycle_1Day": 1, "Lifecycle_3Days": 3, "Lifecycle_5Days": 5, "Lifecycle_10Days": 10,
    "Lifecycle_15Days": 15, "Lifecycle_30Days": 30, "Lifecycle_90Days": 90, "Lifecycle_180Days": 180,
    "Lifecycle_360Days": 360, "Lifecycle_Forever": None,
}


def _parts(path: Any) -> list[str]:
    if not isinstance(path, str):
        raise InvalidRequestError("file path must be a string")
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidRequestError(f"'..' is not allowed in a context path: {path!r}")
    return parts


def relative_path(path: Any, *, allow_root: bool = False) -> str:
    """A path relative to a mount: '/'-separated, no leading '/', no '.', '..' or empty parts."""
    key = "/".join(_parts(path))
    if not key and not allow_root:
        raise InvalidRequestError("file path is required")
    return key


def context_key(path: Any, *, allow_root: bool = False) -> str:
    """A context file's key: its absolute sandbox path, normalized (``a/b`` and ``/a//b`` are ``/a/b``)."""
    return "/" + relative_path(path, allow_root=allow_root)


def under(path: str, base: str) -> bool:
    """``path`` is ``base`` or inside it (relative paths: ``""`` contains all; keys: ``"/"`` does)."""
    return base in ("", "/") or path == base or path.startswith(base + "/")


def join_key(root: str, relative: str) -> str:
    if not relative:
        return root
    return root.rstrip("/") + "/" + relative


def relative_to(key: str, root: str) -> str:
    """The part of ``key`` below ``root`` (``key`` must lie under ``root``)."""
    return key[len(root.rstrip("/")) + 1:] if key != root else ""


@dataclasses.dataclass
class Policy:
    """The parts of a SyncPolicy that change what agbox does."""

    auto_upload: bool = True
    archive: bool = False
    auto_download: bool = True
    sync_deletes: bool = True
    extract: dict[str, Any] = dataclasses.field(default_factory=dict)
    lifecycle_days: int | None = None
    recycle_paths: list[str] = dataclasses.field(default_factory=lambda: [""])
    include: list[str] = dataclasses.field(default_factory=list)
    exclude: list[str] = dataclasses.field(default_factory=list)
    # The key root the mount shows instead of its own path ("" = the mount path itself).
    mapping: str = ""

    @classmethod
    def parse(cls, raw: Any) -> Policy:
        if raw in (None, ""):
            return cls()
        if isinstance(raw, str):
            raw = loads(raw, "policy (SyncPolicy JSON)")
        if not isinstance(raw, dict):
            raise InvalidRequestError("policy must be a JSON object (SyncPolicy)")

        def listed(value: Any, what: str) -> list[Any]:
            if value in (None, ""):
                return []
            if not isinstance(value, list):
                raise InvalidRequestError(f"policy: {what} must be a list")
            return value

        def section(name: str) -> dict[str, Any]:
            value = raw.get(name)
            return value if isinstance(value, dict) else {}

        upload, download = section("uploadPolicy"), section("downloadPolicy")
        recycle, bw = section("recyclePolicy"), section("bwList")
        lifecycle = recycle.get("lifecycle") or "Lifecycle_Forever"
        if not isinstance(lifecycle, str) or lifecycle not in LIFECYCLE_DAYS:
            raise InvalidRequestError(f"unknown lifecycle {clip(lifecycle, 60)}")
        mapping = str(section("mappingPolicy").get("path") or "").strip()
        policy = cls(
            auto_upload=upload.get("autoUpload", True) is not False,
            archive=upload.get("uploadMode") == "Archive",
            auto_download=download.get("autoDownload", True) is not False,
            sync_deletes=section("deletePolicy").get("syncLocalFile", True) is not False,
            extract={k: v for k, v in section("extractPolicy").items()
                     if k in ("extract", "deleteSrcFile", "extractToCurrentFolder")},
            lifecycle_days=LIFECYCLE_DAYS[lifecycle],
            recycle_paths=[relative_path(p, allow_root=True)
                           for p in (listed(recycle.get("paths"), "recyclePolicy.paths") or [""])],
            mapping=context_key(mapping, allow_root=True) if mapping else "",
        )
        for white in listed(bw.get("whiteLists"), "bwList.whiteLists"):
            if not isinstance(white, dict):
                continue
            path = relative_path(str(white.get("path") or ""), allow_root=True)
            if path:
                policy.include.append(path)
            for excluded in listed(white.get("excludePaths"), "whiteLists.excludePaths"):
                rel = relative_path(str(excluded), allow_root=True)
                rel = rel if not path or under(rel, path) else f"{path}/{rel}"
                if rel:
                    policy.exclude.append(rel)
        return policy

    def key_root(self, mount: str) -> str:
        """Where this binding's files live in the context's key space."""
        return self.mapping or mount

    def selects(self, relative: str) -> bool:
        """Is the file at ``relative`` (below the mount) part of the sync?"""
        if self.include and not any(under(relative, base) for base in self.include):
            return False
        return not any(under(relative, base) for base in self.exclude)

    def file_expiry(self, relative: str, now: float) -> float | None:
        if self.lifecycle_days is None or not any(under(relative, base) for base in self.recycle_paths):
            return None
        return now + self.lifecycle_days * 86400


def rebase(paths: list[str], scope: str) -> tuple[list[str], bool]:
    """Paths relative to the mount -> relative to ``scope``; the flag says a path covers all of it."""
    out: list[str] = []
    covers = False
    for path in paths:
        if under(scope, path):
            covers = True
        elif under(path, scope):
            out.append(path[len(scope) + 1:] if scope else path)
    return out, covers
