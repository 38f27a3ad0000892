"""text.embed and text.search on the real all-MiniLM-L6-v2 weights shipped in a package."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flowyard.core.errors import FlowFailed, InvalidInput
from flowyard.core.flow import BatchItem
from flowyard.flows import text
from flowyard.flows.text import Embed, Search
from tests.support.flow_context import LocalFlowContext, make_context

pytestmark = pytest.mark.timeout(180)


def _item(tmp_path: Path, name: str, flow: type[Embed | Search], **params: Any) -> BatchItem:
    ctx = make_context(tmp_path / name)
    return BatchItem(ctx, flow.parse_params(params))


def _vectors(ctx: LocalFlowContext) -> np.ndarray:
    loaded: np.ndarray = np.load(ctx.output("embeddings.npy"))
    return loaded


def test_similar_sentences_score_higher_than_unrelated_ones(tmp_path: Path) -> None:
    item = _item(
        tmp_path,
        "a",
        Embed,
        texts=["A cat sits on the mat.", "A kitten rests on a rug.", "Stock markets fell sharply."],
    )
    Embed().run(item.ctx, item.params)
    vectors = _vectors(item.ctx)
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    related, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert related > unrelated + 0.3, (related, unrelated)
    summary = json.loads(item.ctx.output("summary.json").read_text())
    assert summary["model"] == text.MODEL_NAME
    assert summary["dimension"] == 384


def test_a_batch_gives_each_task_the_vectors_it_would_get_alone(tmp_path: Path) -> None:
    alone = _item(tmp_path, "alone", Embed, text="The weather is lovely today.")
    Embed().run(alone.ctx, alone.params)
    items = [
        _item(tmp_path, "b1", Embed, text="The weather is lovely today."),
        _item(tmp_path, "b2", Embed, texts=["Rain is expected tomorrow.", "Bring an umbrella."]),
    ]
    assert Embed().run_batch(items) == [None, None]
    assert np.allclose(_vectors(items[0].ctx), _vectors(alone.ctx), atol=1e-5)
    assert _vectors(items[1].ctx).shape == (2, 384)
    assert json.loads(items[1].ctx.output("summary.json").read_text())["batch_tasks"] == 2


def test_one_bad_item_fails_only_its_own_task(tmp_path: Path) -> None:
    bad_file = tmp_path / "latin1.txt"
    bad_file.write_bytes("caf\xe9\n".encode("latin-1"))
    good = _item(tmp_path, "good", Embed, text="hello world")
    bad = BatchItem(make_context(tmp_path / "bad", text=bad_file), Embed.parse_params({}))
    outcomes = Embed().run_batch([good, bad])
    assert outcomes[0] is None
    assert isinstance(outcomes[1], FlowFailed)
    assert "not UTF-8" in outcomes[1].message
    assert _vectors(good.ctx).shape == (1, 384)


def test_a_file_of_texts_and_its_limits(tmp_path: Path) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_text("first line\n\n  second line  \n", encoding="utf-8")
    ctx = make_context(tmp_path / "ok", text=lines)
    Embed().run(ctx, Embed.parse_params({}))
    assert _vectors(ctx).shape == (2, 384)

    huge = tmp_path / "huge.txt"
    huge.write_text("x\n" * 1_000_000, encoding="utf-8")
    with pytest.raises(FlowFailed, match="limit is 10000"):
        Embed().run(make_context(tmp_path / "huge", text=huge), Embed.parse_params({}))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    with pytest.raises(FlowFailed, match="has no text"):
        Embed().run(make_context(tmp_path / "empty", text=empty), Embed.parse_params({}))
    with pytest.raises(FlowFailed, match=r"give params\.text"):
        Embed().run(make_context(tmp_path / "none"), Embed.parse_params({}))


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"text": ""}, "params.text"),
        ({"text": "   "}, "params"),
        ({"texts": []}, "params"),
        ({"texts": ["ok", ""]}, "params"),
        ({"text": 3}, "params.text"),
        ({"texts": "not a list"}, "params.texts"),
        ({"text": "a", "texts": ["b"]}, "params"),
        ({"text": "a", "unknown": 1}, "params.unknown"),
    ],
)
def test_bad_params_are_refused_before_a_task_is_stored(params: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        Embed.parse_params(params)
    assert caught.value.field == field


def test_search_ranks_the_relevant_document_first(tmp_path: Path) -> None:
    documents = [
        "The recipe needs flour, eggs and sugar.",
        "The train to Paris leaves at nine.",
        "Our cat likes to sleep in the sun.",
    ]
    queries = ["When does the train depart?", "What does the cake need?"]
    items = [
        _item(tmp_path, f"q{i}", Search, query=q, documents=documents, top_k=2)
        for i, q in enumerate(queries)
    ]
    assert Search().run_batch(items) == [None, None]
    first = json.loads(items[0].ctx.output("results.json").read_text())
    second = json.loads(items[1].ctx.output("results.json").read_text())
    assert first["matches"][0]["index"] == 1
    assert second["matches"][0]["index"] == 0
    assert len(first["matches"]) == 2
    assert first["matches"][0]["score"] > first["matches"][1]["score"]
