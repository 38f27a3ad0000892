"""Upload names: one length cap and one leading-dot rule, however the name is cut."""

from __future__ import annotations

import pytest

from flowyard.core.errors import UnsafeFileName
from flowyard.core.files import MAX_NAME, safe_file_name


@pytest.mark.parametrize(
    "raw",
    [
        "a." + "x" * 150,  # was stored as ".xxx…" (151 characters, hidden)
        "a." + "x" * 250,
        "x" * 200 + ".png",
        "." + "y" * 200,
        "é" * 200,
        "..." + "z" * 130,
    ],
)
def test_long_names_are_cut_and_never_hidden(raw: str) -> None:
    name = safe_file_name(raw)
    assert 0 < len(name) <= MAX_NAME
    assert not name.startswith(".")


def test_a_short_extension_survives_the_cut() -> None:
    name = safe_file_name("p" * 200 + ".png")
    assert name.endswith(".png")
    assert len(name) == MAX_NAME


def test_a_name_no_file_system_could_hold_is_refused() -> None:
    with pytest.raises(UnsafeFileName, match="file name too long") as caught:
        safe_file_name("a." + "x" * 300)
    assert caught.value.field == "inputs"


@pytest.mark.parametrize(
    ("raw", "stored"),
    [("photo.png", "photo.png"), ("my scan 1.jpg", "my scan 1.jpg"), (".bashrc", "_bashrc")],
)
def test_ordinary_names(raw: str, stored: str) -> None:
    assert safe_file_name(raw) == stored
