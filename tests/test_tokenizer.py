import json
import subprocess
import sys

import pytest

from huginn_db.cli import main
from huginn_db.data.reasoning import CharTokenizer
from huginn_db.tokenizer import MIN_VOCAB, SentencePieceTokenizer, load_tokenizer, train_sentencepiece

from .conftest import ROOT

TRICKY = 'Lily had 3 red balloons and 12 blue ones. "Wow!"\n\n  Ünïcödé: 日本語 🙂 ½ x=1.50;\ttab  '


@pytest.fixture
def stories(data_root, tmp_path):
    """The first ~200 KB of TinyStories, copied to tmp_path as a training file."""
    with open(data_root / "tinystories" / "tinystories_val.txt", encoding="utf-8") as f:
        text = f.read(200_000)
    path = tmp_path / "stories.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def tok(stories, tmp_path):
    return SentencePieceTokenizer(train_sentencepiece([str(stories)], 800, str(tmp_path / "tok")))


def test_round_trip_is_exact_on_real_text_unicode_and_digits(tok, stories):
    text = stories.read_text(encoding="utf-8")[:20_000]
    assert tok.decode(tok.encode(text)) == text
    ids = tok.encode(TRICKY)
    assert tok.decode(ids) == TRICKY  # unseen characters fall back to bytes, spacing is kept
    assert tok.sp.unk_id() not in ids
    pieces = [tok.decode([i]) for i in tok.encode("in 2025 she had 1234 apples")]
    assert all(sum(c.isdigit() for c in p) <= 1 for p in pieces)  # split_digits: one digit per piece
    assert len(tok.encode(text)) < 0.5 * len(text)  # it did learn merges


def test_special_ids_match_the_reasoning_tokenizer_and_decode_stops_at_eos(tok):
    char = CharTokenizer()
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (char.pad_id, char.bos_id, char.eos_id) == (0, 1, 2)
    assert tok.vocab_size == 800 and tok.name == "sentencepiece"
    ids = tok.encode("Once upon a time")
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, *tok.encode(" ignored"), tok.pad_id]) == "Once upon a time"
    assert tok.decode([tok.pad_id, tok.bos_id, *ids]) == "Once upon a time"
    assert tok.encode("") == []


def test_training_is_deterministic_and_unigram_works(stories, tmp_path):
    a = SentencePieceTokenizer(train_sentencepiece([str(stories)], 600, str(tmp_path / "a")))
    b = SentencePieceTokenizer(train_sentencepiece([str(stories)], 600, str(tmp_path / "b")))
    assert [a.sp.id_to_piece(i) for i in range(600)] == [b.sp.id_to_piece(i) for i in range(600)]
    u = SentencePieceTokenizer(train_sentencepiece([str(stories)], 600, str(tmp_path / "u"), "unigram"))
    assert u.decode(u.encode(TRICKY)) == TRICKY


def test_save_and_load_tokenizer_specs(tok, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    tok.save(run)
    assert json.loads((run / "tokenizer.json").read_text()) == {"type": "sentencepiece", "model": "tokenizer.model"}
    for spec in (run, str(run), str(run / "tokenizer.model"), tok.model_path):
        loaded = load_tokenizer(spec)
        assert isinstance(loaded, SentencePieceTokenizer) and loaded.encode(TRICKY) == tok.encode(TRICKY)
    load_tokenizer(run).save(run)  # saving onto its own file is fine
    assert isinstance(load_tokenizer("reasoning"), CharTokenizer)
    char_run = tmp_path / "char"
    char_run.mkdir()
    CharTokenizer().save(char_run)
    assert isinstance(load_tokenizer(char_run), CharTokenizer)


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown tokenizer 'gpt2'"):
        load_tokenizer("gpt2")
    bogus = tmp_path / "bogus.model"
    bogus.write_text("not a model")
    with pytest.raises(ValueError, match=r"bogus.model is not a sentencepiece model$"):
        load_tokenizer(bogus)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"type": "tiktoken"}))
    with pytest.raises(ValueError, match="unknown tokenizer type 'tiktoken'"):
        load_tokenizer(tmp_path)


def test_training_errors(stories, tmp_path):
    with pytest.raises(ValueError, match="input file not found: .*nope.txt"):
        train_sentencepiece([str(tmp_path / "nope.txt")], 800, str(tmp_path / "t"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="input file is empty: .*empty.txt"):
        train_sentencepiece([str(tmp_path / "empty.txt")], 800, str(tmp_path / "t"))
    with pytest.raises(ValueError, match=f"vocab_size 100 is too small: .* use at least {MIN_VOCAB}"):
        train_sentencepiece([str(stories)], 100, str(tmp_path / "t"))
    with pytest.raises(ValueError, match=r"^sentencepiece training failed: Vocabulary size too high \(100000\)"):
        train_sentencepiece([str(stories)], 100_000, str(tmp_path / "t"))


def test_cli_trains_and_reports_round_trip(stories, tmp_path):
    out = tmp_path / "cli"
    cmd = [
        sys.executable,
        "-m",
        "huginn_db.cli",
        "tokenizer",
        "train",
        "--input",
        str(stories),
        "--vocab-size",
        "700",
        "--out",
        str(out),
        "--model-type",
        "unigram",
    ]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == str(out / "tokenizer.model") and lines[1].startswith("round-trip ok")
    assert load_tokenizer(out).vocab_size == 700


def test_cli_bad_input(tmp_path, capsys):
    assert (
        main(
            [
                "tokenizer",
                "train",
                "--input",
                str(tmp_path / "missing.txt"),
                "--vocab-size",
                "800",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert capsys.readouterr().err.strip() == f"huginn-db: error: input file not found: {tmp_path / 'missing.txt'}"
