"""Prepared text sets: a corpus tokenized once, in parallel, into one token file per split.

    huginn-db data prepare RECIPE [dotted.overrides] --out DIR [--num-proc N]

DIR holds, per split (train, val): `{split}.bin`, the eos-separated token stream of the split's
documents in corpus order (uint16 when the vocabulary fits, else uint32; `np.memmap`-readable),
and `{split}.idx.npy`, the documents' start offsets (n + 1 int64); `val.jsonl` holds the
held-out documents' text (what the local lm-eval tasks score); `manifest.json` the format
version, the tokenizer's sha256, the sources with their sizes, token and document counts, the
dtype and the document split (seed, fraction). The split is the in-memory path's (same
permutation of whole documents), so the packed windows, and a run's losses, are the same.

Writing is restartable: documents are tokenized in shards (`--num-proc` worker processes, each
with its own tokenizer) written under DIR.tmp/shards and kept there, so a killed prepare started
again tokenizes only the shards it had not finished; DIR appears whole, by one rename, at the end.

Reading (`PreparedWindows`) uses positioned reads of the rows a rank trains on: nothing is
tokenized or held in memory, a rank reads only its own windows, and a resume needs nothing but
the step.
"""

from __future__ import annotations

import hashlib
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


def _encode_shard(task: tuple[str, list[str], str]) -> int:
    """Tokenize one shard of documents into `path`.bin / .len.npy (renamed into place last)."""
    path, docs, dtype = task
    tok = _WORKER["tok"]
    try:
        ids = [tok.encode(d) + [tok.eos_id] for d in docs]
    except ValueError as err:  # only the reasoning tokenizer rejects characters
        raise ValueError(
            f"data.text.tokenizer cannot encode this corpus: {err}; train one with `huginn-db tokenizer train`"
        ) from None
    tmp = path + ".part"
    np.concatenate([np.asarray(x, dtype=dtype) for x in ids]).tofile(tmp)
    np.save(path + ".len.npy", np.asarray([len(x) for x in ids], dtype=np.int64))
    os.replace(tmp, path + ".bin")
    return sum(len(x) for x in ids)


def prepare(text_cfg, split_seed: int, out: Path, num_proc: int = 1, shard_docs: int = 2048, progress=True) -> dict:
    """Tokenize data.text's sources into DIR `out`; returns the manifest. Raises ValueError for
    bad sources, a tokenizer that cannot encode them, or an `out` that already holds a set."""
    from tqdm import tqdm

    out = Path(out)
    if (out / "manifest.json").exists():
        raise ValueError(f"{out} already holds a prepared set; remove it or choose another --out")
    if out.exists():
        raise ValueError(f"{out} exists and is not a prepared set; choose another --out")
    tok = load_tokenizer(text_cfg.tokenizer)
    dtype = token_dtype(tok.vocab_size).name
    docs = TextDocuments(text_cfg)
    n_docs = sum(1 for _ in docs._all_documents(streaming=True))
    n_val = max(1, round(text_cfg.val_fraction * n_docs))
    if n_docs <= n_val:
        raise ValueError(f"data.text: {n_docs} document(s) cannot be split into train and val ({n_val} held out)")
    is_val = np.zeros(n_docs, dtype=bool)
    is_val[np.random.default_rng([split_seed, 0]).permutation(n_docs)[:n_val]] = True
    plan = {
        "format": FORMAT,
        "tokenizer": {"spec": str(text_cfg.tokenizer), "sha256": tokenizer_sha256(text_cfg.tokenizer)},
        "sources": [{"source": s.label, "bytes": _size(s.label)} for s in docs._sources],
        "dtype": dtype,
        "split": {"seed": split_seed, "val_fraction": text_cfg.val_fraction, "documents": n_docs},
        "shard_docs": shard_docs,
    }
    tmp = out.with_name(out.name + ".tmp")
    shards = tmp / "shards"
    if (tmp / "plan.json").exists() and json.loads((tmp / "plan.json").read_text()) != plan:
        shutil.rmtree(tmp)  # an unfinished prepare of something else: its shards are not ours
    shards.mkdir(parents=True, exist_ok=True)
    (tmp / "plan.json").write_text(json.dumps(plan, indent=1))

    names = {s: [] for s in SPLITS}
    pending = {s: [] for s in SPLITS}
    start, tokens = time.perf_counter(), 0
    pool = (
        ProcessPoolExecutor(num_proc, initializer=_init_worker, initargs=(text_cfg.tokenizer,))
        if num_proc > 1
        else None
    )
    if pool is None:
        _init_worker(text_cfg.tokenizer)
    futures = []

    def flush(split):
        path = str(shards / f"{split}-{len(names[split]):06d}")
        names[split].append(path)
        batch, pending[split] = pending[split], []
        if Path(path + ".bin").exists():  # done by an earlier, interrupted prepare
            return
        task = (path, batch, dtype)
        futures.append(pool.submit(_encode_shard, task) if pool else _Done(_encode_shard(task)))
        while sum(not f.done() for f in futures) > 2 * num_proc:  # bound the text in flight
            next(f for f in futures if not f.done()).result()

    bar = tqdm(total=n_docs, unit="doc", disable=not progress, desc="tokenize", mininterval=1)
    try:
        with open(tmp / "val.jsonl.part", "w") as val_text:
            for i, (label, doc) in enumerate(docs._all_documents(streaming=True, labelled=True)):
                split = "val" if is_val[i] else "train"
                pending[split].append(doc)
                if split == "val":
                    val_text.write(json.dumps({"source": label, "text": doc}) + "\n")
                if len(pending[split]) == shard_docs:
                    flush(split)
                bar.update()
            for split in SPLITS:
                if pending[split]:
                    flush(split)
            for f in futures:
                tokens += f.result()
                bar.set_postfix(tokens_per_s=f"{tokens / (time.perf_counter() - start):,.0f}", refresh=False)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    os.replace(tmp / "val.jsonl.part", tmp / "val.jsonl")
    manifest = {**plan, "splits": {s: _concatenate(names[s], tmp / f"{s}.bin", dtype) for s in SPLITS}}
    manifest["seconds"] = round(time.perf_counter() - start, 3)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(shards)
    os.replace(tmp, out)
    return manifest


class _Done:
    """A finished result in a future's clothes (num_proc=1 tokenizes in this process)."""

    def __init__(self, value):
        self.value = value

    def done(self) -> bool:
        return True

    def result(self):
        return self.value


def _size(label: str) -> int | None:
    path = Path(label)
    return path.stat().st_size if path.is_file() else None


def _concatenate(shards: list[str], dest: Path, dtype: str) -> dict:
    """The shards' tokens, in order, into `dest`, and the documents' offsets beside it."""
    lengths = [np.load(s + ".len.npy") for s in shards]
    with open(dest, "wb") as f:
        for s in shards:
            with open(s + ".bin", "rb") as part:
                shutil.copyfileobj(part, f, 1 << 24)
    counts = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    np.save(dest.with_name(dest.stem + ".idx.npy"), offsets)
    size = np.dtype(dtype).itemsize * int(offsets[-1])
    if dest.stat().st_size != size:
        raise OSError(f"{dest}: wrote {dest.stat().st_size} bytes, expected {size}")
    return {"tokens": int(offsets[-1]), "documents": len(counts), "bytes": size}


# --- reading ----------------------------------------------------------------------------------


def read_manifest(root: Path) -> dict:
    """The manifest of a prepared set, checked against its files (one-line ValueError)."""
    root = Path(root)
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except FileNotFoundError:
        raise ValueError(f"data.text.prepared: {root} is not a prepared set (no manifest.json)") from None
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"data.text.prepared: cannot read {root / 'manifest.json'} ({err})") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(
            f"data.text.prepared: {root} is format {manifest.get('format')!r}, this huginn_db reads format "
            f"{FORMAT}; prepare it again with `huginn-db data prepare`"
        )
    for split in SPLITS:
        path, want = root / f"{split}.bin", manifest["splits"][split]["bytes"]
        have = path.stat().st_size if path.is_file() else None
        if have != want:
            state = "missing" if have is None else f"{have} bytes, the manifest says {want}"
            raise ValueError(f"data.text.prepared: {path} is {state} (truncated or replaced); prepare it again")
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
