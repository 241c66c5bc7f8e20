import gzip
import json
import re

import numpy as np
import pytest
import torch

from huginn_db.data.reasoning import CharTokenizer
from huginn_db.data.text import TextConfig, TextCorpus
from tests.conftest import WORDS


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _docs(n: int, length: int = 9, seed: int = 0) -> list[str]:
    """Distinct one-line documents over the reasoning alphabet, so the default tokenizer applies."""
    rng = np.random.default_rng(seed)
    docs: set[str] = set()
    while len(docs) < n:
        docs.add("".join(rng.choice(list("abcdefghij0123456789=;+"), length)))
    return sorted(docs)


def _jsonl(path, docs, field="text"):
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return path


def _corpus(seed=0, **kw) -> TextCorpus:
    return TextCorpus(TextConfig(**{"seq_len": 9, **kw}), seed)


def _windows(batch) -> list[tuple[int, ...]]:
    """Rows back as the seq_len + 1 token windows they were cut from."""
    full = torch.cat([batch["input_ids"], batch["target_ids"][:, -1:]], dim=1)
    return [tuple(r) for r in full.tolist()]


def _texts(batch) -> list[str]:
    return [CharTokenizer().decode(r) for r in batch["input_ids"]]


def _epoch(corpus, batch_size, world, grad_accum, steps, first_step=0) -> list[str]:
    return [
        t
        for step in range(first_step, first_step + steps)
        for micro in range(grad_accum)
        for rank in range(world)
        for t in _texts(corpus.train_batch(batch_size, step, micro, rank, world, grad_accum))
    ]


def test_plain_text_documents_are_packed_into_consecutive_eos_separated_windows(tmp_path, spm_tok):
    rng = np.random.default_rng(1)
    docs = [
        "\n".join(" ".join(rng.choice(WORDS, rng.integers(2, 9))) for _ in range(rng.integers(1, 4))) for _ in range(30)
    ]
    seps = ["\n\n", "\n \n\n", "\n\t\n"]  # blank = empty or whitespace-only lines
    (tmp_path / "docs.txt").write_text("\n\n" + "".join(d + seps[i % 3] for i, d in enumerate(docs)).rstrip())
    c = _corpus(
        files=["docs.txt"], data_root=str(tmp_path), tokenizer=str(spm_tok.model_path), seq_len=16, val_fraction=0.2
    )
    W, eos = 17, spm_tok.eos_id
    for split, indices in (("train", c.train_doc_indices), ("val", c.val_doc_indices)):
        stream = [t for i in indices for t in spm_tok.encode(docs[i]) + [eos]]
        expected = [tuple(stream[k * W : (k + 1) * W]) for k in range(len(stream) // W)]
        if split == "val":
            got = [w for b in c.val_batches(4) for w in _windows(b)]
            assert got == expected and c.num_val_sequences == len(expected)
        else:  # one epoch with batch 1 visits every window once, in permuted order
            got = [w for s in range(c.num_train_sequences) for w in _windows(c.train_batch(1, s))]
            assert sorted(got) == sorted(expected) and got != expected
    assert len(c.val_doc_indices) == 6 and c.train_seq_len == 16


def test_one_document_per_line_without_blank_line_docs(tmp_path):
    docs = _docs(20)
    (tmp_path / "lines.tokens").write_text("\n".join(docs[:10]) + "\n\n" + "\n".join(docs[10:]) + "\n")
    c = _corpus(files=[str(tmp_path / "lines.tokens")], blank_line_docs=False, val_fraction=0.1)
    assert len(c.train_doc_indices) + len(c.val_doc_indices) == 20 and len(c.val_doc_indices) == 2


def test_val_and_train_are_disjoint_by_document(tmp_path):
    docs = _docs(40)  # 9 characters + eos = one 10-token window per document
    c = _corpus(files=[str(_jsonl(tmp_path / "d.jsonl", docs))], val_fraction=0.1)
    val = [t for b in c.val_batches(3) for t in _texts(b)]
    train = _epoch(c, 1, 1, 1, c.num_train_sequences)
    assert len(val) == 4 and len(train) == 36
    assert not set(val) & set(train) and set(val) | set(train) == set(docs)
    assert sorted(val) == [docs[i] for i in c.val_doc_indices]
    assert not set(c.val_doc_indices) & set(c.train_doc_indices)
    # the split follows the run's seed unless split_seed fixes it across seeds
    other = _corpus(files=[str(tmp_path / "d.jsonl")], val_fraction=0.1, seed=1)
    assert list(other.val_doc_indices) != list(c.val_doc_indices)
    for seed in (0, 1, 2):
        fixed = _corpus(files=[str(tmp_path / "d.jsonl")], val_fraction=0.1, split_seed=7, seed=seed)
        assert list(fixed.val_doc_indices) == list(
            _corpus(files=[str(tmp_path / "d.jsonl")], val_fraction=0.1, seed=7).val_doc_indices
        )


def test_sharding_covers_every_train_sequence_once_per_epoch(tmp_path):
    docs = _docs(25)
    c = _corpus(files=[str(_jsonl(tmp_path / "d.jsonl", docs))], val_fraction=0.04)
    assert c.num_train_sequences == 24  # = batch 3 x world 2 x grad_accum 2 x 2 steps
    train_docs = sorted(set(docs) - {t for b in c.val_batches(8) for t in _texts(b)})
    first, second = _epoch(c, 3, 2, 2, steps=2), _epoch(c, 3, 2, 2, steps=2, first_step=2)
    assert sorted(first) == sorted(second) == train_docs  # each exactly once
    assert first != second  # a fresh permutation per epoch
    assert c.position(1, grad_accum=2, world=2, batch_size=3) == {"epoch": 0, "offset": 12}
    assert c.position(2, grad_accum=2, world=2, batch_size=3) == {"epoch": 1, "offset": 0}


def test_batches_match_the_reasoning_format_and_are_pure_functions_of_their_indices(tmp_path):
    path = str(_jsonl(tmp_path / "d.jsonl", _docs(60, length=13)))
    a, b = _corpus(files=[path], seed=5), _corpus(files=[path], seed=5)
    x, y = a.train_batch(4, step=3, micro=1, rank=1, world=2, grad_accum=2), b.train_batch(4, 3, 1, 1, 2, 2)
    assert all(torch.equal(x[k], y[k]) for k in ("input_ids", "target_ids", "loss_weight"))
    assert x["input_ids"].shape == x["target_ids"].shape == x["loss_weight"].shape == (4, 9)
    assert x["input_ids"].dtype == torch.long and torch.equal(x["loss_weight"], torch.ones(4, 9))  # every token counts
    assert torch.equal(x["input_ids"][:, 1:], x["target_ids"][:, :-1])
    assert not torch.equal(x["input_ids"], a.train_batch(4, 3, 1, 0, 2, 2)["input_ids"])
    other = _corpus(files=[path], seed=6)
    assert not torch.equal(x["input_ids"], other.train_batch(4, 3, 1, 1, 2, 2)["input_ids"])


def test_streaming_is_retired_with_the_way_to_prepare():
    with pytest.raises(ValueError, match=r"streaming was retired.*huginn-db data prepare.*data.text.prepared=DIR"):
        TextConfig(files=["x.txt"], streaming=True)


def test_formats_compression_and_path_resolution(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = _docs(30)
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps({"body": d}) + "\n" for d in docs[:10]))
    pq.write_table(pa.table({"body": docs[10:20]}), tmp_path / "b.parquet")
    (tmp_path / "c.txt").write_text("\n\n".join(docs[20:]))
    monkeypatch.setenv("HUGINN_DB_DATA", str(tmp_path))  # relative paths resolve against it
    c = _corpus(files=["a.jsonl.gz", "b.parquet", "c.txt"], text_field="body", val_fraction=0.1)
    seen = _epoch(c, 1, 1, 1, c.num_train_sequences) + [t for b in c.val_batches(8) for t in _texts(b)]
    assert sorted(seen) == docs
    monkeypatch.delenv("HUGINN_DB_DATA")
    monkeypatch.chdir(tmp_path)  # ... else against the working directory
    assert _corpus(files=["c.txt"]).num_train_sequences == 9


def _write(path, data):
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return path.name


ERRORS = [  # file name, content (None: absent), config, expected message ({root}: the data root)
    (
        "missing.jsonl",
        None,
        {},
        r"file not found: {root}/missing.jsonl \('missing.jsonl' resolved against data_root {root}\)",
    ),
    ("empty.txt", "", {}, r"file is empty: {root}/empty.txt$"),
    ("blank.txt", " \n\n\t\n", {}, r"{root}/blank.txt holds no documents"),
    ("bad.jsonl", '{"text": "ab"}\nnot json\n', {}, r"{root}/bad.jsonl is not valid JSON / JSON lines \(.+\)$"),
    (
        "qa.jsonl",
        '{"question": "a", "answer": "b"}\n',
        {},
        r"qa.jsonl has no field 'text' \(columns: question, answer\); set data.text.text_field",
    ),
    ("num.jsonl", '{"text": 5}\n', {}, r"num.jsonl: field 'text' holds int, not text"),
    (
        "latin1.txt",
        b"abc\n\ncaf\xe9\n",
        {},
        r"{root}/latin1.txt is not valid UTF-8 \(invalid continuation byte: byte b'\\xe9'\)",
    ),
    (
        "table.csv",
        "text\nab\n",
        {},
        r"cannot tell the format of {root}/table.csv from its extension; set data.text.format",
    ),
    (
        "upper.txt",
        "Hello\n\nHowdy\n",
        {},
        r"data.text.tokenizer='reasoning' cannot encode this corpus: character 'H' is not in the reasoning alphabet",
    ),
    (
        "small.txt",
        "abc\n\nabd\n\nabe\n",
        {"val_fraction": 0.3},
        r"the train split has 8 tokens but one sequence needs seq_len \+ 1 = 10; add data or lower data.text.seq_len",
    ),
]


@pytest.mark.parametrize("name, data, kw, message", ERRORS, ids=[e[0] for e in ERRORS])
def test_error_messages(tmp_path, name, data, kw, message):
    if data is not None:
        _write(tmp_path / name, data)
    with pytest.raises(ValueError, match=message.format(root=re.escape(str(tmp_path)))) as err:
        _corpus(files=[name], data_root=str(tmp_path), **kw)
    assert "\n" not in str(err.value)


def test_corpus_too_small_for_one_batch_and_bad_config(tmp_path):
    c = _corpus(files=[str(_jsonl(tmp_path / "d.jsonl", _docs(25)))], val_fraction=0.04)
    with pytest.raises(
        ValueError,
        match=r"train split has 24 sequences \(240 tokens\) but one micro-batch over all "
        r"ranks needs 26 \(260 tokens\)",
    ):
        c.train_batch(13, step=0, rank=0, world=2)
    with pytest.raises(ValueError, match="set exactly one of files"):
        TextCorpus(TextConfig(), seed=0)
    with pytest.raises(ValueError, match="data.text.tokenizer: unknown tokenizer .gpt2."):
        _corpus(files=[str(tmp_path / "d.jsonl")], tokenizer="gpt2")
    with pytest.raises(ValueError, match=r"format must be auto\|text\|json\|parquet, got .csv."):
        TextCorpus(TextConfig(files=["x"], format="csv"), seed=0)


def test_real_data(data_root, tmp_path, spm_tok):
    with pytest.raises(ValueError, match=r"train.jsonl has no field 'text' \(columns: question, answer\)"):
        _corpus(files=["gsm8k/train.jsonl"], data_root=str(data_root))
    text = (data_root / "tinystories" / "tinystories_val.txt").read_text(encoding="utf-8")
    paragraphs = [p for p in re.split(r"\n(?:[ \t]*\n)+", text) if p.strip()]
    c = _corpus(
        files=["tinystories/tinystories_val.txt"],
        data_root=str(data_root),
        tokenizer=str(spm_tok.model_path),
        seq_len=64,
    )
    assert len(c.train_doc_indices) + len(c.val_doc_indices) == len(paragraphs)
    assert len(c.val_doc_indices) == round(0.01 * len(paragraphs))
    for batch in (c.train_batch(8, step=0), c.val_batches(8)[0]):
        for row in batch["input_ids"]:  # text up to the first eos is verbatim file text
            piece = spm_tok.decode(row.tolist())
            assert piece in text
