"""Context sync configuration, with the official SDK's names (``agb.context_sync``): ``ContextSync`` and
``SyncPolicy`` with its parts. ``CreateSessionParams.context_syncs`` items; ``to_wire()`` gives a
``persistenceDataList`` entry.

Paths: ``ContextSync.path`` is where the context is mounted in the sandbox; white lists and recycle
paths are relative to it; ``MappingPolicy.path`` names the sandbox path the files were synced from
when they should appear at another mount.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from typing import Any

_WILDCARD = re.compile(r"[*?\[\]]")


def _no_wildcards(path: str, what: str) -> None:
    if path and _WILDCARD.search(path):
        raise ValueError(f"Wildcard patterns are not supported in {what}. Got: {path}. "
                         "Please use exact directory paths instead.")


class UploadStrategy(str, enum.Enum):
    UPLOAD_BEFORE_RESOURCE_RELEASE = "UploadBeforeResourceRelease"


class DownloadStrategy(str, enum.Enum):
    DOWNLOAD_ASYNC = "DownloadAsync"


class UploadMode(str, enum.Enum):
    FILE = "File"
    ARCHIVE = "Archive"


class Lifecycle(str, enum.Enum):
    LIFECYCLE_1DAY = "Lifecycle_1Day"
    LIFECYCLE_3DAYS = "Lifecycle_3Days"
    LIFECYCLE_5DAYS = "Lifecycle_5Days"
    LIFECYCLE_10DAYS = "Lifecycle_10Days"
    LIFECYCLE_15DAYS = "Lifecycle_15Days"
    LIFECYCLE_30DAYS = "Lifecycle_30Days"
    LIFECYCLE_90DAYS = "Lifecycle_90Days"
    LIFECYCLE_180DAYS = "Lifecycle_180Days"
    LIFECYCLE_360DAYS = "Lifecycle_360Days"
    LIFECYCLE_FOREVER = "Lifecycle_Forever"


@dataclasses.dataclass
class UploadPolicy:
    auto_upload: bool = True
    upload_strategy: UploadStrategy = UploadStrategy.UPLOAD_BEFORE_RESOURCE_RELEASE
    upload_mode: UploadMode = UploadMode.FILE

    def __post_init__(self) -> None:
        self.upload_mode = UploadMode(self.upload_mode)

    def to_dict(self) -> dict[str, Any]:
        return {"autoUpload": self.auto_upload, "uploadStrategy": UploadStrategy(self.upload_strategy).value,
                "uploadMode": self.upload_mode.value}


@dataclasses.dataclass
class DownloadPolicy:
    auto_download: bool = True
    download_strategy: DownloadStrategy = DownloadStrategy.DOWNLOAD_ASYNC

    def to_dict(self) -> dict[str, Any]:
        return {"autoDownload": self.auto_download,
                "downloadStrategy": DownloadStrategy(self.download_strategy).value}


@dataclasses.dataclass
class DeletePolicy:
    sync_local_file: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"syncLocalFile": self.sync_local_file}


@dataclasses.dataclass
class ExtractPolicy:
    extract: bool = True
    delete_src_file: bool = True
    extract_current_folder: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"extract": self.extract, "deleteSrcFile": self.delete_src_file,
                "extractToCurrentFolder": self.extract_current_folder}


@dataclasses.dataclass
class RecyclePolicy:
    lifecycle: Lifecycle = Lifecycle.LIFECYCLE_FOREVER
    paths: list[str] = dataclasses.field(default_factory=lambda: [""])

    def __post_init__(self) -> None:
        self.lifecycle = Lifecycle(self.lifecycle)
        for path in self.paths:
            _no_wildcards(path, "recycle policy paths")

    def to_dict(self) -> dict[str, Any]:
        return {"lifecycle": self.lifecycle.value, "paths": list(self.paths)}


@dataclasses.dataclass
class WhiteList:
    path: str = ""
    exclude_paths: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        _no_wildcards(self.path, "path")
        for path in self.exclude_paths:
            _no_wildcards(path, "exclude_paths")

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "excludePaths": list(self.exclude_paths)}


@dataclasses.dataclass
class BWList:
    white_lists: list[WhiteList] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"whiteLists": [w.to_dict() for w in self.white_lists]}


@dataclasses.dataclass
class MappingPolicy:
    path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path}


@dataclasses.dataclass
class SyncPolicy:
    upload_policy: UploadPolicy | None = None
    download_policy: DownloadPolicy | None = None
    delete_policy: DeletePolicy | None = None
    extract_policy: ExtractPolicy | None = None
    recycle_policy: RecyclePolicy | None = None
    bw_list: BWList | None = None
    mapping_policy: MappingPolicy | None = None

    def __post_init__(self) -> None:
        self.upload_policy = self.upload_policy or UploadPolicy()
        self.download_policy = self.download_policy or DownloadPolicy()
        self.delete_policy = self.delete_policy or DeletePolicy()
        self.extract_policy = self.extract_policy or ExtractPolicy()
        self.recycle_policy = self.recycle_policy or RecyclePolicy()
        self.bw_list = self.bw_list or BWList()

    def to_dict(self) -> dict[str, Any]:
        parts: dict[str, Any] = {"uploadPolicy": self.upload_policy, "downloadPolicy": self.download_policy,
                                 "deletePolicy": self.delete_policy, "extractPolicy": self.extract_policy,
                                 "recyclePolicy": self.recycle_policy, "bwList": self.bw_list,
                                 "mappingPolicy": self.mapping_policy}
        return {key: value.to_dict() for key, value in parts.items() if value is not None}


@dataclasses.dataclass
class ContextSync:
    context_id: str
    path: str
    policy: SyncPolicy | None = None

    @classmethod
    def new(cls, context_id: str, path: str, policy: SyncPolicy | None = None) -> ContextSync:
        return cls(context_id, path, policy)

    def with_policy(self, policy: SyncPolicy) -> ContextSync:
        self.policy = policy
        return self

    def to_wire(self) -> dict[str, Any]:
        item: dict[str, Any] = {"contextId": self.context_id, "path": self.path}
        if self.policy is not None:
            item["policy"] = json.dumps(self.policy.to_dict(), ensure_ascii=False)
        return item
