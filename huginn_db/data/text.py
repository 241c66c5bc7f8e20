"""Text corpora through HF `datasets`: local json/jsonl/text/parquet files or a hub dataset.

Documents
  json/jsonl/parquet rows (and hub dataset rows) are one document each, read from `text_field`.
  Plain text is read line by line; with `blank_line_docs`, consecutive non-empty lines form one
  document (blank lines separate stories in TinyStories, paragraphs in WikiText), otherwise each
  non-empty line is a document (one sentence per line, as in LM1B).

In memory (default)
  Documents are split train/val by a permutation seeded by `seed` (whole documents, so no text is
  in both), tokenized, concatenated with an eos after every document and packed into windows of
  seq_len + 1 tokens (the tail that fills no window is dropped); a window w gives
  input_ids = w[:-1], target_ids = w[1:], and every position is scored.

  Which window a row gets: micro-batch g = step * grad_accum + micro; row i of rank r is global
  sample idx = (g * world + r) * batch_size + i, i.e. window perm_e[idx % N] of epoch e = idx // N,
  where perm_e is a permutation seeded by (seed, e). Ranks and micro-batches tile the index line,
  so within an epoch no window repeats and none is skipped, and a batch is a pure function of its
  indices: resuming at step s needs nothing but s.

Prepared (`prepared=DIR`)
  For corpora one process cannot tokenize at every start: `huginn-db data prepare` tokenizes the
  sources once, in parallel, into token files with the same split and the same eos-separated
  stream (huginn_db.data.prepared). Windows are read from the file by the same index rule, so a
  run's batches and losses equal the in-memory path's; a rank reads only its own rows, nothing
  is tokenized at start, and resuming at step s needs nothing but s.
"""

from __future__ import annotations

import itertools
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from huginn_db.data.documents import TextDocuments
from huginn_db.data.mixture import Blend
from huginn_db.data.prepared import PreparedWindows, read_manifest, tokenizer_sha256
from huginn_db.tokenizer import load_tokenizer

# TextConfig.format's choices; the field stays `str` until the recipe loader's type check
# accepts Literal, and __post_init__ checks it against these meanwhile
TextFormat = typing.Literal["auto", "text", "json", "parquet"]
FORMATS = typing.get_args(TextFormat)[1:]  # the datasets builders; "auto" picks one by extension


@dataclass
class TextConfig:
    """data.text: a text corpus from local files or a hub dataset (exactly one of the two)."""

    files: list[str] = field(default_factory=list)
    """Local files; relative to data_root, else the CWD."""
    data_root: str | None = None
    """Directory the relative files are under (None: $HUGINN_DB_DATA if set)."""
    dataset: str | None = None
    """Hub dataset name, passed to load_dataset as-is (instead of files)."""
    dataset_config: str | None = None
    """The hub dataset's configuration name (load_dataset's `name`)."""
    split: str = "train"
    """Hub split; a local file is a split of its own."""
    format: TextFormat = "auto"
    """auto (by extension) | text | json | parquet."""
    text_field: str = "text"
    """json/parquet/hub column; plain text always has "text"."""
    prepared: str | None = None
    """A directory written by `huginn-db data prepare` from these sources: train from its token
    files (nothing tokenized at start; relative to the CWD). None: tokenize in memory."""
    mixture: list[str] = field(default_factory=list)
    """Several prepared directories trained on at once (a blend), instead of `prepared`: each
    training sample comes from one set, in the shares of mixture_weights (huginn_db.data.mixture);
    each set keeps the train/val split it was prepared with, and validation scores every set's."""
    mixture_weights: list[float] = field(default_factory=list)
    """One positive weight per mixture set, any scale: the share of training samples it gives."""
    streaming: bool = False
    """Retired (every rank re-read the whole stream, and a resume everything before it): use prepared."""
    seq_len: int = 256
    """Tokens per training window (inputs; each window holds seq_len + 1)."""
    val_fraction: float = 0.01
    """Share of documents held out for validation, at least one (in memory)."""
    split_seed: int | None = None
    """Seed of that train/val split (None: the run's seed); fix it to score seeds on one val set."""
    tokenizer: str = "reasoning"
    """See huginn_db.tokenizer.load_tokenizer."""
    blank_line_docs: bool = True
    """Plain text: blank lines separate documents (else every non-empty line is one)."""

    def __post_init__(self):
        # messages name the bare field; the recipe loader prefixes the section ("data.text.")
        # Neither files nor dataset is the default (a reasoning run): TextCorpus refuses that.
        if self.files and self.dataset:
            raise ValueError(
                f"files and dataset are both set (dataset={self.dataset!r}); set exactly one: "
                f"local files or a hub dataset"
            )
        if self.format not in typing.get_args(TextFormat):
            raise ValueError(f"format must be {'|'.join(typing.get_args(TextFormat))}, got {self.format!r}")
        if self.seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {self.seq_len}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.mixture and self.prepared:
            raise ValueError("prepared and mixture are both set; set one (a mixture of one set trains as prepared=DIR)")
        if len(self.mixture_weights) != len(self.mixture):
            raise ValueError(
                f"mixture has {len(self.mixture)} set(s) but mixture_weights has {len(self.mixture_weights)} "
                "weight(s); give one weight per set"
            )
        if any(not w > 0 for w in self.mixture_weights):  # also NaN
            raise ValueError(f"mixture_weights must be positive, got {self.mixture_weights}")
        if self.streaming:
            raise ValueError(
                "streaming was retired (every rank re-read the stream, and a resume all of it before its "
                "step); tokenize once with `huginn-db data prepare RECIPE --out DIR` and set data.text.prepared=DIR"
            )


class TextCorpus(TextDocuments):
    """Packed next-token training windows over a text corpus; same batch dicts as ReasoningCorpus."""

    def __init__(self, cfg: TextConfig, seed: int):
        self.seed = seed
        try:
            self.tokenizer = load_tokenizer(cfg.tokenizer)
        except ValueError as err:
            raise ValueError(f"data.text.tokenizer: {err}") from None
        self._window = cfg.seq_len + 1
        self._perms: dict[tuple[int, int], np.ndarray] = {}
        self._blend = None  # a mixture's Blend: which set each sample comes from
        if cfg.prepared or cfg.mixture:
            self.cfg = cfg  # the sources are the prepared sets' business: not read here
            self._init_prepared()
        else:
            super().__init__(cfg)
            self._init_in_memory()
        self._train, self._val = self._sets[0], self._vals[0]

    def _encode(self, doc: str) -> list[int]:
        """Document tokens plus the eos that separates it from the next one."""
        try:
            return self.tokenizer.encode(doc) + [self.tokenizer.eos_id]
        except ValueError as err:  # only the reasoning tokenizer rejects characters
            raise ValueError(
                f"data.text.tokenizer={self.cfg.tokenizer!r} cannot encode this corpus: {err}; "
                "train one with `huginn-db tokenizer train` and point data.text.tokenizer at it"
            ) from None

    def _too_small(self, split: str, tokens: int) -> ValueError:
        return ValueError(
            f"data.text: the {split} split has {tokens} tokens but one sequence needs "
            f"seq_len + 1 = {self._window}; add data or lower data.text.seq_len"
        )

    def _pack(self, docs: list[str], split: str) -> np.ndarray:
        """(n, seq_len + 1) consecutive windows of the eos-separated token stream."""
        stream = np.fromiter(itertools.chain.from_iterable(self._encode(d) for d in docs), dtype=np.int32)
        n = len(stream) // self._window
        if n == 0:
            raise self._too_small(split, len(stream))
        return stream[: n * self._window].reshape(n, self._window)

    # --- in memory ------------------------------------------------------------------------------

    def _init_in_memory(self) -> None:
        docs, self.val_doc_indices, self.train_doc_indices = self.split(self.seed)
        self._sets = [self._pack([docs[i][1] for i in self.train_doc_indices], "train")]
        self._vals = [self._pack([docs[i][1] for i in self.val_doc_indices], "val")]

    def _epoch_perm(self, s: int, epoch: int) -> np.ndarray:
        """Set s's window order in its `epoch`; set 0 draws as a lone corpus does, so a one-set
        mixture trains on the batches of prepared=DIR."""
        if (s, epoch) not in self._perms:
            if len(self._perms) > 2 * len(self._sets):  # a batch spans at most two epochs of a set
                self._perms.clear()
            key = [self.seed, 1, epoch] + ([s] if s else [])
            self._perms[s, epoch] = np.random.default_rng(key).permutation(len(self._sets[s]))
        return self._perms[s, epoch]

    # --- prepared ---------------------------------------------------------------------------------

    def _init_prepared(self) -> None:
        cfg = self.cfg
        key = "data.text.prepared" if cfg.prepared else "data.text.mixture"
        sha = tokenizer_sha256(cfg.tokenizer)
        self._sets, self._vals = [], []
        for root in map(Path, [cfg.prepared] if cfg.prepared else cfg.mixture):
            manifest = read_manifest(root, key)
            if manifest["tokenizer"]["sha256"] != sha:
                raise ValueError(
                    f"{key}: {root} was tokenized with {manifest['tokenizer']['spec']} "
                    f"(sha256 {manifest['tokenizer']['sha256'][:12]}), not data.text.tokenizer={cfg.tokenizer} "
                    f"(sha256 {sha[:12]}); use its tokenizer or prepare again"
                )
            split = manifest["split"]
            seed = self.seed if cfg.split_seed is None else cfg.split_seed
            if cfg.prepared and (split["seed"], split["val_fraction"]) != (seed, cfg.val_fraction):
                raise ValueError(
                    f"{key}: {root} holds the split of split_seed={split['seed']}, val_fraction="
                    f"{split['val_fraction']}, this run asks for {seed}, {cfg.val_fraction}; set "
                    f"data.text.split_seed={split['seed']} data.text.val_fraction={split['val_fraction']} or prepare again"
                )
            for name, sets in (("train", self._sets), ("val", self._vals)):
                tokens = manifest["splits"][name]["tokens"]
                windows = PreparedWindows(root / f"{name}.bin", manifest["dtype"], tokens, self._window)
                if len(windows) == 0:
                    raise self._too_small(name if cfg.prepared else f"{root} {name}", tokens)
                sets.append(windows)
        if cfg.mixture:
            self._blend = Blend(cfg.mixture_weights)

    # --- batches --------------------------------------------------------------------------------

    @property
    def train_seq_len(self) -> int:
        return self.cfg.seq_len

    @property
    def num_train_sequences(self) -> int:
        return sum(map(len, self._sets))

    @property
    def num_val_sequences(self) -> int:
        return sum(map(len, self._vals))

    @staticmethod
    def _batch(windows: np.ndarray) -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(np.asarray(windows, dtype=np.int64))
        return {
            "input_ids": ids[:, :-1],
            "target_ids": ids[:, 1:],
            "loss_weight": torch.ones(ids.shape[0], ids.shape[1] - 1),
        }

    def train_batch(
        self, batch_size: int, step: int, micro: int = 0, rank: int = 0, world: int = 1, grad_accum: int = 1
    ) -> dict[str, torch.Tensor]:
        """Micro-batch `micro` of `step` for data-parallel `rank`: a pure function of its indices."""
        if batch_size < 1 or step < 0 or not 0 <= micro < grad_accum or not 0 <= rank < world:
            raise ValueError(
                f"bad batch indices: batch_size={batch_size} step={step} micro={micro}/{grad_accum} rank={rank}/{world}"
            )
        g = step * grad_accum + micro
        n = self.num_train_sequences
        need = batch_size * world
        if need > n:
            raise ValueError(
                f"data.text: the train split has {n} sequences ({n * self._window} tokens) but one "
                f"micro-batch over all ranks needs {need} ({need * self._window} tokens); "
                "add data or lower seq_len / micro_batch_size"
            )
        idx = (g * world + rank) * batch_size + np.arange(batch_size)
        sets, k = (np.zeros_like(idx), idx) if self._blend is None else self._blend(idx)
        out = np.empty((batch_size, self._window), dtype=np.int64)
        for s in np.unique(sets):
            mine, m = sets == s, len(self._sets[s])
            rows = [self._epoch_perm(int(s), int(e))[o] for e, o in zip(k[mine] // m, k[mine] % m)]
            out[mine] = self._sets[s][rows]
        return self._batch(out)

    def position(self, step: int, grad_accum: int, world: int, batch_size: int) -> dict[str, int]:
        """Where `step` starts, for checkpoint client state: {"epoch", "offset"} into the epoch's
        permutation (of a mixture: of as many samples as its sets' windows together)."""
        idx = step * grad_accum * world * batch_size
        return {"epoch": idx // self.num_train_sequences, "offset": idx % self.num_train_sequences}

    def val_batches(self, batch_size: int) -> list[dict[str, torch.Tensor]]:
        """Every val window once, in order (a mixture's set by set); a set's last batch may be smaller."""
        return [self._batch(v[i : i + batch_size]) for v in self._vals for i in range(0, len(v), batch_size)]
