"""The documents of a text corpus's sources, read through HF `datasets`, and the in-memory
train/val split of them (whole documents). huginn_db.data.text tokenizes and packs them; the
local lm-eval text tasks read the same split to score only what a run held out.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EXTENSION_FORMATS = {".txt": "text", ".tokens": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")  # datasets decompresses these transparently


@dataclass
class _Source:
    """One load_dataset call; errors name `label`."""

    label: str
    path: str  # builder name (text/json/parquet) or hub dataset
    format: str | None  # "text" groups lines into documents
    name: str | None = None
    data_files: list[str] | None = None
    split: str = "train"


def _cache_dir() -> str:
    """datasets' cache: HF_DATASETS_CACHE / HF_HOME when set, else the temp dir (never a read-only ~)."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return os.environ["HF_DATASETS_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"], "datasets"))
    return str(Path(tempfile.gettempdir(), "huginn_db-datasets"))


def _describe(err: BaseException, fmt: str | None) -> str:
    """One line from the most specific exception in a datasets error chain."""
    chain, seen = [], err
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for e in chain:
        if isinstance(e, UnicodeDecodeError):
            return f"is not valid UTF-8 ({e.reason}: byte {e.object[e.start : e.start + 1]!r})"
    root = next((e for e in chain if type(e).__name__ != "DatasetGenerationError"), err)
    msg = str(root).strip().splitlines()[0] if str(root).strip() else type(root).__name__
    if fmt == "json" and any(isinstance(e, ValueError) for e in chain):  # pyarrow's ArrowInvalid is one
        return f"is not valid JSON / JSON lines ({msg})"
    return f"could not be loaded ({type(root).__name__}: {msg})"


class TextDocuments:
    """The documents of data.text's sources, and the in-memory train/val split of them."""

    def __init__(self, cfg):  # a huginn_db.data.text.TextConfig
        self.cfg = cfg
        self._check_config()
        self._sources = self._resolve_sources()

    # --- configuration ------------------------------------------------------------------------

    def _check_config(self) -> None:
        cfg = self.cfg
        # TextConfig checks its fields; that a source is set is due only when the corpus is built
        if bool(cfg.files) == bool(cfg.dataset):
            raise ValueError("data.text: set exactly one of files (local) or dataset (hub)")

    def _resolve_sources(self) -> list[_Source]:
        cfg = self.cfg
        if cfg.dataset:
            return [_Source(f"dataset {cfg.dataset}", cfg.dataset, None, cfg.dataset_config, split=cfg.split)]
        root = cfg.data_root or os.environ.get("HUGINN_DB_DATA")
        sources = []
        for name in cfg.files:
            path = Path(name).expanduser()
            if not path.is_absolute():
                path = Path(root or ".", path).expanduser().resolve()
            if not path.is_file():
                where = f"data_root {root}" if root else "the working directory"
                raise ValueError(f"data.text: file not found: {path} ({name!r} resolved against {where})")
            if path.stat().st_size == 0:
                raise ValueError(f"data.text: file is empty: {path}")
            fmt = cfg.format if cfg.format != "auto" else self._format_of(path)
            sources.append(_Source(str(path), fmt, fmt, data_files=[str(path)]))
        return sources

    @staticmethod
    def _format_of(path: Path) -> str:
        suffixes = [s for s in path.suffixes if s not in COMPRESSIONS]
        fmt = EXTENSION_FORMATS.get(suffixes[-1].lower() if suffixes else "")
        if fmt is None:
            raise ValueError(
                f"data.text: cannot tell the format of {path} from its extension; "
                "set data.text.format to text, json or parquet"
            )
        return fmt

    # --- documents ------------------------------------------------------------------------------

    def _rows(self, src: _Source, streaming: bool) -> Iterator[dict]:
        """Batches of rows from datasets; any loader error becomes a ValueError naming the source."""
        import datasets  # slow import; only text runs pay for it

        try:
            ds = datasets.load_dataset(
                src.path,
                src.name,
                data_files=src.data_files,
                split=src.split,
                streaming=streaming,
                cache_dir=_cache_dir(),
            )
            yield from ds.iter(batch_size=1024)
        except Exception as err:
            raise ValueError(f"data.text: {src.label} {_describe(err, src.format)}") from None

    def _documents(self, src: _Source, streaming: bool) -> Iterator[str]:
        """Non-empty documents of one source, in order."""
        column = "text" if src.format == "text" else self.cfg.text_field
        count, lines = 0, []
        for batch in self._rows(src, streaming):
            if column not in batch:
                raise ValueError(
                    f"data.text: {src.label} has no field {column!r} (columns: "
                    f"{', '.join(batch)}); set data.text.text_field"
                )
            for value in batch[column]:
                if value is not None and not isinstance(value, str):
                    raise ValueError(f"data.text: {src.label}: field {column!r} holds {type(value).__name__}, not text")
                if src.format == "text" and self.cfg.blank_line_docs:
                    if value.strip():
                        lines.append(value)
                        continue
                    value, lines = "\n".join(lines), []
                if value and value.strip():
                    count += 1
                    yield value
        if lines:
            count += 1
            yield "\n".join(lines)
        if count == 0:
            raise ValueError(f"data.text: {src.label} holds no documents (only blank text)")

    def _all_documents(self, streaming: bool, labelled: bool = False) -> Iterator:
        """Documents of every source in order; (source label, document) pairs if `labelled`."""
        for src in self._sources:
            yield from (((src.label, d) if labelled else d) for d in self._documents(src, streaming))

    def held_out(self, seed: int) -> list[tuple[str, str]]:
        """The (source label, document) pairs a corpus with this seed does not train on."""
        docs, val, _ = self.split(seed)
        return [docs[i] for i in val]

    def split(self, seed: int) -> tuple[list[tuple[str, str]], np.ndarray, np.ndarray]:
        """Every (source label, document) pair, and the sorted indices of the validation and
        train documents (in memory; whole documents, so no text is in both), drawn with
        data.text.split_seed, else `seed`."""
        seed = seed if self.cfg.split_seed is None else self.cfg.split_seed
        docs = list(self._all_documents(False, labelled=True))
        n_val = max(1, round(self.cfg.val_fraction * len(docs)))
        if len(docs) <= n_val:
            raise ValueError(
                f"data.text: {len(docs)} document(s) cannot be split into train and val ({n_val} held out); add data"
            )
        order = np.random.default_rng([seed, 0]).permutation(len(docs))
        # sorted: each split keeps corpus order, so neighbouring text stays together in a window
        return docs, np.sort(order[:n_val]), np.sort(order[n_val:])


def run_held_out(run, data_root: str | None = None) -> list[tuple[str, str]]:
    """The (source label, document) pairs a text run (its RunConfig) held out, by its own split;
    its relative files resolved against `data_root` when given, else as the run resolved them."""
    text = run.data.text if data_root is None else dataclasses.replace(run.data.text, data_root=data_root)
    if text.prepared or text.mixture:  # the prepared sets kept them: nothing to re-read
        return [d for root in ([text.prepared] if text.prepared else text.mixture) for d in prepared_held_out(root)]
    return TextDocuments(text).held_out(run.seed)


def prepared_held_out(root: str | Path) -> list[tuple[str, str]]:
    """The (source label, document) pairs a prepared set holds out, as `huginn-db data prepare`
    read them (its val.jsonl)."""
    path = Path(root) / "val.jsonl"
    try:
        with open(path) as f:
            return [(r["source"], r["text"]) for r in map(json.loads, f)]
    except OSError as err:
        raise ValueError(f"data.text.prepared: cannot read {path} ({err.strerror})") from None
