"""Prepared text sets: a corpus tokenized once, in parallel, into one token file per split.

    huginn-db data prepare RECIPE [dotted.overrides] --out DIR [--num-proc N]

DIR holds, per split (train, val): `{split}.bin`, the eos-separated token stream of the split's
documents in corpus order (uint16 when the vocabulary fits, else uint32; `np.memmap`-readable),
and `{split}.idx.npy`, the documents' start offsets (n + 1 int64); `val.jsonl` holds the
held-out documents' text (what the local lm-eval tasks score); `manifest.json` the format
version, the tokenizer's sha256, the sources with their sizes, token and document counts, the
dtype and the document split (seed, fraction). The split is the in-memory path's (same
permutation of whole documents), so the packed windows, and a run's losses, are the same.

Writing is one pass over the sources and restartable: documents are tokenized in shards of
`--shard-docs` (by `--num-proc` worker processes, each with its own tokenizer) written under
DIR.tmp/shards and kept there, so a killed prepare started again tokenizes only the shards it
had not finished; the split is applied to the finished shards, and DIR appears whole, by one
rename, at the end.

Reading (`PreparedWindows`) uses positioned reads of the rows a rank trains on: nothing is
tokenized or held in memory, a rank reads only its own windows, and a resume needs nothing but
the step.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from huginn_db.data.documents import TextDocuments
from huginn_db.tokenizer import load_tokenizer

FORMAT = 1
SPLITS = ("train", "val")


def tokenizer_sha256(spec: str) -> str:
    """The tokenizer's identity: its model file's bytes (the reasoning alphabet: its symbols)."""
    tok = load_tokenizer(spec)
    path = getattr(tok, "model_path", None) or getattr(tok, "path", None)
    data = Path(path).read_bytes() if path is not None else json.dumps(tok.itos).encode()
    return hashlib.sha256(data).hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32)


# --- writing ----------------------------------------------------------------------------------

_WORKER: dict = {}


def _init_worker(spec: str) -> None:
    _WORKER["tok"] = load_tokenizer(spec)


def _encode_shard(task: tuple[str, list[tuple[str, str]], str]) -> int:
    """Tokenize one shard of (source, document) pairs into `path`.bin (the eos-separated
    stream), .len.npy (tokens per document) and .jsonl (the documents, for the held-out text);
    the .bin is renamed into place last, so it marks a finished shard."""
    path, docs, dtype = task
    tok = _WORKER["tok"]
    try:
        ids = [tok.encode(d) + [tok.eos_id] for _, d in docs]
    except ValueError as err:  # only the reasoning tokenizer rejects characters
        raise ValueError(
            f"data.text.tokenizer cannot encode this corpus: {err}; train one with `huginn-db tokenizer train`"
        ) from None
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    with open(path + ".jsonl", "w") as f:
        f.writelines(json.dumps({"source": label, "text": d}) + "\n" for label, d in docs)
    np.save(path + ".len.npy", lengths)
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
    flat.tofile(path + ".part")
    os.replace(path + ".part", path + ".bin")
    return int(lengths.sum())


def prepare(text_cfg, split_seed: int, out: Path, num_proc: int = 1, shard_docs: int = 2048, progress=True) -> dict:
    """Tokenize data.text's sources into DIR `out`; returns the manifest. Raises ValueError for
    bad sources, a tokenizer that cannot encode them, or an `out` that already holds a set.

    One pass over the sources: documents go in source order to shards, tokenized by `num_proc`
    processes (1: this one) whatever the split; once every shard is done the document count
    gives the split, and the shards are cut into the two token files."""
    from tqdm import tqdm

    out = Path(out)
    if (out / "manifest.json").exists():
        raise ValueError(f"{out} already holds a prepared set; remove it or choose another --out")
    if out.exists():
        raise ValueError(f"{out} exists and is not a prepared set; choose another --out")
    start = time.perf_counter()
    tok = load_tokenizer(text_cfg.tokenizer)
    dtype = token_dtype(tok.vocab_size).name
    docs = TextDocuments(text_cfg)
    plan = {
        "format": FORMAT,
        "tokenizer": {"spec": str(text_cfg.tokenizer), "sha256": tokenizer_sha256(text_cfg.tokenizer)},
        "sources": [{"source": s.label, "bytes": _size(s.label)} for s in docs._sources],
        "dtype": dtype,
        "split": {"seed": split_seed, "val_fraction": text_cfg.val_fraction},
        "shard_docs": shard_docs,
    }
    tmp = out.with_name(out.name + ".tmp")
    shards = tmp / "shards"
    if (tmp / "plan.json").exists() and json.loads((tmp / "plan.json").read_text()) != plan:
        shutil.rmtree(tmp)  # an unfinished prepare of something else: its shards are not ours
    shards.mkdir(parents=True, exist_ok=True)
    (tmp / "plan.json").write_text(json.dumps(plan, indent=1))

    names, pending, running, tokens = [], [], [], 0
    pool = None
    if num_proc > 1:
        pool = ProcessPoolExecutor(num_proc, initializer=_init_worker, initargs=(text_cfg.tokenizer,))
    else:
        _init_worker(text_cfg.tokenizer)
    bar = tqdm(unit="tok", unit_scale=True, disable=not progress, desc="tokenize", mininterval=1)

    def collect(future) -> None:
        nonlocal tokens
        tokens += future.result()
        bar.update(tokens - bar.n)

    def flush() -> None:
        path = str(shards / f"shard-{len(names):06d}")
        names.append(path)
        batch = pending[:]
        pending.clear()
        if Path(path + ".bin").exists():  # done by an earlier, interrupted prepare
            return
        if pool is None:
            bar.update(_encode_shard((path, batch, dtype)))
            return
        running.append(pool.submit(_encode_shard, (path, batch, dtype)))
        while len(running) > 2 * num_proc:  # bound the text in flight
            collect(running.pop(0))

    try:
        for pair in docs._all_documents(streaming=True, labelled=True):
            pending.append(pair)
            if len(pending) == shard_docs:
                flush()
        if pending:
            flush()
        while running:
            collect(running.pop(0))
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    splits = _split_shards(names, tmp, dtype, split_seed, text_cfg.val_fraction)
    manifest = {**plan, "split": {**plan["split"], "documents": sum(v["documents"] for v in splits.values())}}
    manifest["splits"] = splits
    manifest["seconds"] = round(time.perf_counter() - start, 3)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(shards)
    os.replace(tmp, out)
    return manifest


def _split_shards(names: list[str], tmp: Path, dtype: str, seed: int, val_fraction: float) -> dict:
    """The in-memory split (a seeded permutation of all documents, whole documents held out)
    applied to the shards: train.bin / val.bin with their offsets, and val.jsonl."""
    lengths = [np.load(n + ".len.npy") for n in names]
    n_docs = sum(len(x) for x in lengths)
    n_val = max(1, round(val_fraction * n_docs))
    if n_docs <= n_val:
        raise ValueError(f"data.text: {n_docs} document(s) cannot be split into train and val ({n_val} held out)")
    is_val = np.zeros(n_docs, dtype=bool)
    is_val[np.random.default_rng([seed, 0]).permutation(n_docs)[:n_val]] = True
    counts = {"train": [], "val": []}
    first = 0
    with (
        open(tmp / "train.bin", "wb") as train,
        open(tmp / "val.bin", "wb") as val,
        open(tmp / "val.jsonl", "w") as text,
    ):
        for name, n in zip(names, lengths):
            held = is_val[first : first + len(n)]
            first += len(n)
            stream = np.fromfile(name + ".bin", dtype=dtype)
            mask = np.repeat(held, n)
            stream[~mask].tofile(train)
            stream[mask].tofile(val)
            counts["train"].append(n[~held])
            counts["val"].append(n[held])
            if held.any():
                with open(name + ".jsonl") as f:
                    text.writelines(line for line, h in zip(f, held) if h)
    out = {}
    for split, parts in counts.items():
        offsets = np.concatenate([[0], np.cumsum(np.concatenate(parts))]).astype(np.int64)
        np.save(tmp / f"{split}.idx.npy", offsets)
        size = np.dtype(dtype).itemsize * int(offsets[-1])
        if (tmp / f"{split}.bin").stat().st_size != size:
            raise OSError(f"{tmp / split}.bin: {(tmp / f'{split}.bin').stat().st_size} bytes written, {size} expected")
        out[split] = {"tokens": int(offsets[-1]), "documents": len(offsets) - 1, "bytes": size}
    return out


def _size(label: str) -> int | None:
    path = Path(label)
    return path.stat().st_size if path.is_file() else None


# --- reading ----------------------------------------------------------------------------------


def read_manifest(root: Path, key: str = "data.text.prepared") -> dict:
    """The manifest of a prepared set, checked against its files (one-line ValueError naming `key`)."""
    root = Path(root)
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except FileNotFoundError:
        raise ValueError(f"{key}: {root} is not a prepared set (no manifest.json)") from None
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{key}: cannot read {root / 'manifest.json'} ({err})") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(
            f"{key}: {root} is format {manifest.get('format')!r}, this huginn_db reads format "
            f"{FORMAT}; prepare it again with `huginn-db data prepare`"
        )
    for split in SPLITS:
        path, want = root / f"{split}.bin", manifest["splits"][split]["bytes"]
        have = path.stat().st_size if path.is_file() else None
        if have != want:
            state = "missing" if have is None else f"{have} bytes, the manifest says {want}"
            raise ValueError(f"{key}: {path} is {state} (truncated or replaced); prepare it again")
    return manifest


class PreparedWindows:
    """Windows of `window` consecutive tokens of one split's token file (the tail that fills no
    window is dropped, as the in-memory packing does): `len`, and rows by index list or slice,
    as an (n, window) int64 array read with os.pread."""

    def __init__(self, path: Path, dtype: str, tokens: int, window: int):
        self.path, self.dtype, self.window = str(path), np.dtype(dtype), window
        self.n = tokens // window
        self._fd, self._pid = None, None

    def __len__(self) -> int:
        return self.n

    def _file(self) -> int:
        if self._pid != os.getpid():  # opened per process: loader workers fork with the object
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def __getstate__(self):
        return {**self.__dict__, "_fd": None, "_pid": None}

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, slice):
            rows = range(*rows.indices(self.n))
        size = self.window * self.dtype.itemsize
        out = np.empty((len(rows), self.window), dtype=np.int64)
        fd = self._file()
        for i, k in enumerate(rows):
            if not 0 <= k < self.n:
                raise IndexError(f"window {k} of {self.n}")
            out[i] = np.frombuffer(os.pread(fd, size, int(k) * size), dtype=self.dtype)
        return out
