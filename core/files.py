"""File naming rules shared by every file store (pure: no I/O)."""

from __future__ import annotations

import re
import unicodedata

from flowyard.core.errors import UnsafeFileName

_ALLOWED = re.compile(r"[^A-Za-z0-9._ -]")
MAX_NAME = 120
"""Stored names are cut to this (keeping a short extension)."""
MAX_SENT_NAME = 255
"""Longer than any file system allows: such a name is a client bug, refused."""
MAX_EXTENSION = 16


def safe_file_name(raw: str, *, field: str = "inputs") -> str:
    """A name that stays inside its folder; refuse traversal and absolute paths outright.

    Quietly rewriting ``../../etc/passwd`` into something harmless would hide an
    attack or a client bug, so those are errors; other odd characters are replaced.
    """
    name = unicodedata.normalize("NFC", raw or "").strip()
    if not name:
        raise UnsafeFileName(f"{field}: a file has no name", field=field)
    if "\x00" in name:
        raise UnsafeFileName(f"{field}: file name {raw!r} contains a NUL byte", field=field)
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[\\/]", name):
        raise UnsafeFileName(f"{field}: file name {raw!r} is an absolute path", field=field)
    parts = re.split(r"[\\/]", name)
    if any(p in ("..", ".") for p in parts) or len(parts) > 1:
        raise UnsafeFileName(
            f"{field}: file name {raw!r} contains a path; send the bare file name", field=field
        )
    if len(name) > MAX_SENT_NAME:
        raise UnsafeFileName(
            f"{field}: file name too long ({len(name)} characters; at most {MAX_SENT_NAME})",
            field=field,
        )
    cleaned = _ALLOWED.sub("_", name)
    if len(cleaned) > MAX_NAME:
        stem, dot, ext = cleaned.rpartition(".")
        keep_ext = bool(dot and stem) and len(ext) <= MAX_EXTENSION
        cleaned = stem[: MAX_NAME - len(ext) - 1] + dot + ext if keep_ext else cleaned[:MAX_NAME]
    # after cutting, so that no cut can produce a hidden file
    if cleaned.startswith("."):
        cleaned = "_" + cleaned[1:]
    return cleaned


def guess_media_type(name: str) -> str:
    lower = name.lower()
    for suffix, media in (
        (".png", "image/png"),
        (".jpg", "image/jpeg"),
        (".jpeg", "image/jpeg"),
        (".json", "application/json"),
        (".txt", "text/plain"),
    ):
        if lower.endswith(suffix):
            return media
    return "application/octet-stream"
