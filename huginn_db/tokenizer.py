"""Tokenizers: the reasoning benchmark's character tokenizer, and SentencePiece for text corpora.

    huginn-db tokenizer train --input FILE [FILE ...] --vocab-size N --out DIR [--model-type bpe|unigram]

Training settings are chosen so that decode(encode(text)) == text for any UTF-8 string:
byte fallback (no <unk> for unseen characters), the identity normalizer and no whitespace
collapsing (so spacing and unicode forms survive). Digits are split one per piece, which helps
arithmetic. Special ids match the reasoning CharTokenizer (pad=0, bos=1, eos=2; unk=3), so
code that pads with 0 or stops at 2 works for either tokenizer.

A saved tokenizer is a directory holding tokenizer.json ({"type": ...}); `load_tokenizer`
accepts "reasoning", such a directory, or a SentencePiece .model file.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import sentencepiece as spm

from huginn_db.errors import ConfigError

SPECIAL_IDS = {"pad_id": 0, "bos_id": 1, "eos_id": 2, "unk_id": 3}
BYTE_PIECES = 256
MIN_VOCAB = len(SPECIAL_IDS) + BYTE_PIECES + 1  # specials + byte fallback + at least one character
MAX_SENTENCES = 2_000_000  # lines sampled for training; more buys little and costs memory


def train_sentencepiece(inputs: list[str], vocab_size: int, out_dir: str, model_type: str = "bpe") -> Path:
    """Trains on plain-text files (one sentence per line); writes out_dir/tokenizer.{model,vocab}."""
    if not inputs:
        raise ValueError("no input files given")
    for name in inputs:
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"input file not found: {name}")
        if path.stat().st_size == 0:
            raise ValueError(f"input file is empty: {name}")
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type must be bpe or unigram, got {model_type!r}")
    if vocab_size < MIN_VOCAB:
        raise ValueError(
            f"vocab_size {vocab_size} is too small: byte fallback needs {BYTE_PIECES} pieces "
            f"plus {len(SPECIAL_IDS)} specials, so use at least {MIN_VOCAB}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        spm.SentencePieceTrainer.train(
            input=[str(p) for p in inputs],
            model_prefix=str(out / "tokenizer"),
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            split_digits=True,
            **SPECIAL_IDS,
            input_sentence_size=MAX_SENTENCES,
            shuffle_input_sentence=False,  # first N lines: deterministic
            minloglevel=2,
        )  # the trainer logs hundreds of lines; failures still raise
    except RuntimeError as err:  # e.g. "INTERNAL: src/x.cc(638) [cond] Vocabulary size too high (N) ..."
        reason = re.sub(r"^[A-Z_]+: (\S+\(\d+\) \[.*?\] )?", "", str(err)).strip()
        raise ValueError(f"sentencepiece training failed: {reason}") from None
    return out / "tokenizer.model"


def until_eos(ids, eos_id: int) -> list[int]:
    """The ids before the first EOS (generation pads finished rows with EOS)."""
    out = []
    for i in ids:
        if int(i) == eos_id:
            break
        out.append(int(i))
    return out


SPECIALS = ["<pad>", "<bos>", "<eos>"]
ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz=;+-*?"  # ids stay fixed; families append what else they use


class CharTokenizer:
    """Character-level tokenizer: the base alphabet (45 symbols with specials) plus `extra`."""

    name = "reasoning"

    def __init__(self, extra: str = ""):
        self.itos = SPECIALS + list(ALPHABET) + sorted(set(extra) - set(ALPHABET))
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

    @classmethod
    def from_itos(cls, itos: list[str]) -> "CharTokenizer":
        tok = cls()
        if itos[: len(tok.itos)] != tok.itos:
            raise ValueError("tokenizer.json: its symbols do not start with the reasoning alphabet")
        return cls("".join(itos[len(tok.itos) :]))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as err:
            raise ValueError(f"character {err.args[0]!r} is not in the reasoning alphabet") from None

    def decode(self, ids) -> str:
        return "".join(self.itos[i] for i in until_eos(ids, self.eos_id) if i >= len(SPECIALS))

    def save(self, directory: str | Path) -> None:
        Path(directory, "tokenizer.json").write_text(json.dumps({"type": self.name, "itos": self.itos}))

    def save_hf(self, directory: str | Path) -> None:
        """The same ids as a `tokenizers` tokenizer.json (one word per character) + tokenizer_config.json."""
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

        tok = Tokenizer(models.WordLevel({s: i for i, s in enumerate(self.itos)}, unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
        tok.decoder = decoders.Fuse()
        tok.add_special_tokens(SPECIALS)
        tok.save(str(Path(directory, "tokenizer.json")))
        _write_hf_specials(directory, *SPECIALS)


class SentencePieceTokenizer:
    """A SentencePiece model with the CharTokenizer interface (encode adds no bos/eos)."""

    name = "sentencepiece"

    def __init__(self, model_path: str | Path):
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise ValueError(f"tokenizer model not found: {model_path}")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.model_path))
        except RuntimeError:
            raise ValueError(f"{model_path} is not a sentencepiece model") from None
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
        # models trained elsewhere may have no pad piece (-1); padding with eos is then harmless
        self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else self.eos_id

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids) -> str:
        """Text up to the first eos; pad and bos are dropped (as CharTokenizer.decode does)."""
        return self.sp.decode([i for i in until_eos(ids, self.eos_id) if i not in (self.pad_id, self.bos_id)])

    def save(self, directory: str | Path) -> None:
        target = Path(directory, "tokenizer.model")
        if not (target.exists() and target.samefile(self.model_path)):
            shutil.copyfile(self.model_path, target)
        Path(directory, "tokenizer.json").write_text(json.dumps({"type": self.name, "model": target.name}))

    def save_hf(self, directory: str | Path) -> None:
        """tokenizer.model (transformers loads it with its sentencepiece tokenizers) + tokenizer_config.json."""
        shutil.copyfile(self.model_path, Path(directory, "tokenizer.model"))
        ids = (self.pad_id, self.bos_id, self.eos_id)
        _write_hf_specials(directory, *(self.sp.id_to_piece(i) for i in ids))


def _write_hf_specials(directory, pad: str, bos: str, eos: str) -> None:
    config = {"bos_token": bos, "eos_token": eos, "pad_token": pad}
    Path(directory, "tokenizer_config.json").write_text(json.dumps(config, indent=1))


class HFTokenizer:
    """An HF `tokenizers` tokenizer.json (e.g. Huginn's) with the CharTokenizer interface; its
    bos/eos/pad tokens are tokenizer_config.json's (pad: eos when it names none)."""

    name = "huggingface"

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        self.path = Path(path)
        try:
            self.tok = Tokenizer.from_file(str(self.path))
        except Exception as err:
            raise ValueError(
                f"{self.path} is not a tokenizers tokenizer.json ({str(err).splitlines()[0][:120]})"
            ) from None
        config = self.path.with_name("tokenizer_config.json")
        try:
            specials = json.loads(config.read_text())
        except (OSError, ValueError):
            raise ValueError(f"{config} is missing or unreadable: it names the bos/eos tokens") from None

        def token_id(key: str, required: bool = True) -> int | None:
            token = specials.get(key)
            token = token.get("content") if isinstance(token, dict) else token
            i = self.tok.token_to_id(token) if isinstance(token, str) else None
            if i is None and required:
                raise ValueError(f"{config}: {key} {token!r} is not a token of {self.path.name}")
            return i

        self.bos_id, self.eos_id = token_id("bos_token"), token_id("eos_token")
        pad = token_id("pad_token", required=False)
        self.pad_id = self.eos_id if pad is None else pad

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        try:
            return self.tok.encode(text, add_special_tokens=False).ids
        except Exception as err:
            raise ValueError(
                f"{self.path.name} cannot encode {text[:40]!r}: {str(err).splitlines()[0][:120]}"
            ) from None

    def decode(self, ids) -> str:
        return self.tok.decode([i for i in until_eos(ids, self.eos_id) if i not in (self.pad_id, self.bos_id)])

    def save(self, directory: str | Path) -> None:
        for src in (self.path, self.path.with_name("tokenizer_config.json")):
            target = Path(directory, src.name)
            if not (target.exists() and target.samefile(src)):
                shutil.copyfile(src, target)

    save_hf = save


def load_tokenizer(spec: str | Path):
    """`"reasoning"`, a .model file, or a directory with tokenizer.json (as written by save(), or
    an HF `tokenizers` file with its tokenizer_config.json) or tokenizer.model."""
    if str(spec) == "reasoning":
        return CharTokenizer()
    path = Path(spec)
    if path.suffix == ".model" and not path.is_file():
        raise ValueError(f"tokenizer model not found: {path}")
    if path.is_file() and path.suffix == ".model":
        return SentencePieceTokenizer(path)
    meta_path = path / "tokenizer.json"
    if path.is_dir() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            raise ValueError(f"{meta_path} is not valid JSON") from None
        kind = meta.get("type") if isinstance(meta, dict) else None
        if kind is None and isinstance(meta, dict) and isinstance(meta.get("model"), dict):
            return HFTokenizer(meta_path)  # a `tokenizers` file (Huginn's, or an import's)
        if kind == "reasoning":  # the base alphabet plus what the run's task family added
            return CharTokenizer.from_itos(meta["itos"]) if "itos" in meta else CharTokenizer()
        if kind == "sentencepiece":
            return SentencePieceTokenizer(path / meta.get("model", "tokenizer.model"))
        raise ValueError(f"{meta_path}: unknown tokenizer type {kind!r} (expected reasoning or sentencepiece)")
    if path.is_dir() and (path / "tokenizer.model").is_file():  # an HF-style directory with a sentencepiece model
        return SentencePieceTokenizer(path / "tokenizer.model")
    raise ValueError(
        f"unknown tokenizer {str(spec)!r}: expected 'reasoning', a .model file, or a directory holding tokenizer.json"
    )


def _sample_text(path: str, limit: int = 2000) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read(limit)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="huginn-db tokenizer", description="Train a SentencePiece tokenizer.")
    sub = ap.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train on plain-text files (one sentence or paragraph per line)")
    tr.add_argument("--input", nargs="+", required=True, metavar="FILE")
    tr.add_argument("--vocab-size", type=int, required=True)
    tr.add_argument("--out", required=True, metavar="DIR")
    tr.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe")
    args = ap.parse_args(argv)
    try:
        path = train_sentencepiece(args.input, args.vocab_size, args.out, args.model_type)
        tok = SentencePieceTokenizer(path)
        tok.save(args.out)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    sample = _sample_text(args.input[0])
    ids = tok.encode(sample)
    ok = tok.decode(ids) == sample
    print(path)
    print(
        f"round-trip {'ok' if ok else 'FAILED'}: {len(sample)} characters of {args.input[0]} -> {len(ids)} tokens "
        f"(vocab {tok.vocab_size})"
    )
    return 0 if ok else 1
