"""Images: small declarative TOML files naming a base filesystem, tool sets and default limits."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from agbox.errors import ImageNotFoundError, InvalidRequestError
from agbox.runtime.base import Limits

_DIR = Path(__file__).resolve().parent
MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Image:
    id: str
    description: str
    base: str
    tool_sets: tuple[str, ...]
    limits: Limits
    env: dict[str, str]
    # Host paths bound read-only into the sandbox (e.g. the host's font cache for a desktop image).
    ro_binds: tuple[tuple[str, str], ...] = ()


def _load(path: Path) -> Image:
    data = tomllib.loads(path.read_text())
    limits = data.get("limits", {})
    return Image(
        id=data["id"],
        description=data.get("description", ""),
        base=data.get("base", "host-usr"),
        tool_sets=tuple(data.get("tool_sets", ["system", "shell"])),
        limits=Limits(
            memory_bytes=int(limits.get("memory_mb", 1024)) * MIB,
            cpus=float(limits.get("cpus", 1.0)),
            pids=int(limits.get("pids", 512)),
            disk_bytes=int(limits.get("disk_mb", 2048)) * MIB,
        ),
        env={str(k): str(v) for k, v in data.get("env", {}).items()},
        ro_binds=tuple((str(source), str(target)) for source, target in data.get("ro_binds", [])),
    )


class ImageCatalog:
    """The built-in images, overridden or extended by the TOML files of ``extra_dir`` (same ``id``
    replaces a built-in: that is how an operator changes an image's default limits)."""

    def __init__(self, directory: Path = _DIR, extra_dir: Path | None = None) -> None:
        paths = sorted(directory.glob("*.toml"))
        if extra_dir is not None and extra_dir.is_dir():
            paths += sorted(extra_dir.glob("*.toml"))
        self._images = {image.id: image for image in (_load(p) for p in paths)}

    def get(self, image_id: str | None) -> Image:
        if not image_id or not isinstance(image_id, str):
            raise InvalidRequestError("imageId is required")
        image = self._images.get(image_id)
        if image is None:
            known = ", ".join(sorted(self._images))
            raise ImageNotFoundError(f"image {image_id!r} not found; available images: {known}")
        return image

    def ids(self) -> list[str]:
        return sorted(self._images)
