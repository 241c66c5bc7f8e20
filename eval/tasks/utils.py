"""Dataset loaders for the local lm-eval tasks (their `custom_dataset` targets).

Each turns one file format of the shared data directory (schemas: shared/data/README.md) into
`{split: datasets.Dataset}` with the fields the task YAML reads. File paths arrive through the
YAML's dataset_kwargs (absolute: huginn_db.lm_eval substitutes the data root); lm-eval also
passes the task metadata, which the loaders ignore (**_).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets

# a WikiText article starts at a title line " = Title = "; sections are " = = Section = = "
_WIKI_TITLE = re.compile(r"^ = [^=](.*[^=])? = $")


def _jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _splits(make, data_files: dict) -> dict[str, datasets.Dataset]:
    return {split: datasets.Dataset.from_list(make(path)) for split, path in data_files.items()}


def reasoning(family: str, difficulty: int, checkpoint: str | None = None, **_) -> dict[str, datasets.Dataset]:
    """Test problems of one family and difficulty, from the recipe the model trained on.

    lm-eval hands model_args to the task as metadata, so `checkpoint` names the run (or export)
    being scored: if it trained on this family, its data.reasoning config (family knobs, test
    seed) defines the problems; otherwise — no checkpoint, another family, a text model — the
    family's defaults do (jsonl has none: its tasks need the checkpoint of a jsonl run)."""
    import dataclasses

    from huginn_db.data.reasoning import ReasoningConfig, ReasoningCorpus

    cfg = ReasoningConfig(family=family)
    if checkpoint:
        from huginn_db.checkpoint import read_config

        run = read_config(checkpoint)
        if run.data.name == "reasoning" and run.data.reasoning.family == family:
            cfg = run.data.reasoning
    cfg = dataclasses.replace(cfg, test_difficulties=[int(difficulty)])
    return {"test": datasets.Dataset.from_list(ReasoningCorpus(cfg, seed=0).test_set())}


def held_out(path: str, checkpoint: str | None) -> list[str] | None:
    """The documents of `path` that the checkpoint's run did not train on, when it is a text run
    that trained on this file (its own split, documents as it read them); None otherwise.

    The run's relative file names are matched against the end of `path`, so a run recorded
    against another data root still finds the file it trained on."""
    if not checkpoint:
        return None
    from huginn_db.checkpoint import read_config
    from huginn_db.data.documents import run_held_out
    from huginn_db.data.prepared import read_manifest

    run = read_config(checkpoint)
    text = run.data.text
    if run.data.name != "text" or text.dataset:
        return None
    target = Path(path).resolve()
    names = list(text.files)
    for root in [text.prepared] * bool(text.prepared) + list(text.mixture):  # what each set read
        names += [s["source"] for s in read_manifest(root)["sources"]]
    for name in names:
        rel = Path(name).expanduser()
        if rel.is_absolute():
            root = text.data_root
            if rel.resolve() != target:
                continue
        elif target.as_posix().endswith("/" + rel.as_posix()):
            root = target.as_posix()[: -len(rel.as_posix())]
        else:
            continue
        try:
            docs = run_held_out(run, data_root=root)
        except ValueError as err:
            raise ValueError(f"{checkpoint} trained on {path}; cannot rebuild its held-out split: {err}") from None
        # a prepared set records where it read the file, maybe under another data root
        return [d for label, d in docs if Path(label).resolve() == target or label.endswith("/" + rel.as_posix())]
    return None


def _text_splits(make, data_files: dict, checkpoint: str | None) -> dict[str, datasets.Dataset]:
    def documents(path):
        own = held_out(path, checkpoint)
        return make(path) if own is None else [{"text": d} for d in own]

    return _splits(documents, data_files)


def text_blocks(data_files: dict, checkpoint: str | None = None, **_) -> dict[str, datasets.Dataset]:
    """Plain text, one document per blank-line-separated block (TinyStories marks no story
    boundaries, so these are paragraphs — the documents huginn_db.data.text trains on). A file
    the checkpoint's run trained on contributes only the documents that run held out."""

    def make(path):
        blocks = re.split(r"\n\s*\n", Path(path).read_text(encoding="utf-8"))
        return [{"text": b.strip("\n")} for b in blocks if b.strip()]

    return _text_splits(make, data_files, checkpoint)


def lines(data_files: dict, checkpoint: str | None = None, **_) -> dict[str, datasets.Dataset]:
    """One document per non-empty line (LM1B: one tokenized sentence per line); held-out
    documents only from a file the checkpoint's run trained on, as in text_blocks."""

    def make(path):
        return [{"text": line} for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]

    return _text_splits(make, data_files, checkpoint)


def wikitext_articles(data_files: dict, **_) -> dict[str, datasets.Dataset]:
    """Tokenized WikiText-2 split into articles at title lines; each page is its raw lines."""

    def make(path):
        pages = []
        for line in Path(path).read_text(encoding="utf-8").splitlines(keepends=True):
            if _WIKI_TITLE.match(line.rstrip("\n")):
                pages.append([])
            if pages:  # the blank line before the first title belongs to no article
                pages[-1].append(line)
        return [{"page": "".join(p)} for p in pages]

    return _splits(make, data_files)


def arc(data_files: dict, **_) -> dict[str, datasets.Dataset]:
    """AI2 ARC jsonl (question.stem, question.choices[].text/label, answerKey) → the HF
    ai2_arc schema lm-eval's arc YAMLs read. A split may list several files, each a subset of
    the original split in its order (the GenMC Challenge-Test copy lacks 2 items the
    letter-labelled file supplies): `_merge_in_order` puts every item at its original place, so
    `--limit N` takes the same first N items as stock."""

    def make(paths):
        docs = []
        for path in [paths] if isinstance(paths, str) else paths:
            docs = _merge_in_order(docs, _jsonl(path), path)
        return [
            {
                "id": d["id"],
                "question": d["question"]["stem"],
                "answerKey": d["answerKey"],
                "choices": {
                    "text": [c["text"] for c in d["question"]["choices"]],
                    "label": [c["label"] for c in d["question"]["choices"]],
                },
            }
            for d in docs
        ]

    return _splits(make, data_files)


def _merge_in_order(a: list[dict], b: list[dict], name: str) -> list[dict]:
    """The union by id of two subsequences of one ordered split, in that order; a's copy of a
    shared item wins. The ids both hold anchor the order: between two consecutive anchors, the
    items only one file holds go there as that file orders them. ValueError if the files order
    the shared ids differently, or if both hold items of their own in one gap (their order
    relative to each other is then unknown)."""
    in_a, in_b = {d["id"] for d in a}, {d["id"] for d in b}
    if [d["id"] for d in a if d["id"] in in_b] != [d["id"] for d in b if d["id"] in in_a]:
        raise ValueError(f"{name}: the items it shares with the files before it are in another order")

    def gaps(docs, other):  # [(items before the next shared id, that shared id or None)]
        out, run = [], []
        for d in docs:
            if d["id"] in other:
                out.append((run, d))
                run = []
            else:
                run.append(d)
        return out + [(run, None)]

    merged = []
    for (only_a, shared), (only_b, _) in zip(gaps(a, in_b), gaps(b, in_a)):
        if only_a and only_b:
            raise ValueError(
                f"{name}: cannot place {only_b[0]['id']}: the files before it hold other items "
                f"({only_a[0]['id']}, ...) in the same gap" + (f" before {shared['id']}" if shared else " at the end")
            )
        merged += only_a + only_b + ([shared] if shared else [])
    return merged


def piqa(docs: str, labels: str, **_) -> dict[str, datasets.Dataset]:
    """PIQA validation: goal/sol1/sol2 with the label joined in from the aligned .lst file."""
    rows = _jsonl(docs)
    gold = [int(x) for x in Path(labels).read_text().split()]
    if len(rows) != len(gold):
        raise ValueError(f"{docs} has {len(rows)} items but {labels} has {len(gold)} labels")
    return {"validation": datasets.Dataset.from_list([{**r, "label": y} for r, y in zip(rows, gold)])}


def hellaswag(path: str, **_) -> dict[str, datasets.Dataset]:
    """klosax's 6-lines-per-item dump of the validation set (activity label: ctx, gold label, 4
    endings) → lm-eval hellaswag's query/choices, as close to stock's process_docs as the dump
    allows. The dump joined ctx_a and ctx_b without capitalising ctx_b and stripped only the
    [header]/[step]/[substeps]/[title] markers; here ctx_b is split off again and capitalised
    (`_split_ctx`) and what is left in brackets goes through stock's preprocess. What cannot be
    restored is listed in hellaswag_local.yaml."""
    text = Path(path).read_text(encoding="utf-8").splitlines()
    if len(text) % 6:
        raise ValueError(f"{path}: {len(text)} lines is not 6 per item")
    items = [text[i : i + 6] for i in range(0, len(text), 6)]
    return {
        "validation": datasets.Dataset.from_list(
            [
                {"query": _hellaswag_query(it[0]), "label": int(it[1]), "choices": [_unbracket(e) for e in it[2:6]]}
                for it in items
            ]
        )
    }


def _hellaswag_query(line: str) -> str:
    """Stock's query, activity_label + ": " + ctx_a + " " + ctx_b.capitalize(), from the dump's
    line (no activity label holds ": ")."""
    label, ctx = line.split(": ", 1)
    ctx_a, ctx_b = _split_ctx(ctx)
    return _unbracket(" ".join(p for p in (label + ":", ctx_a, ctx_b.capitalize()) if p))


_SENTENCE_END = re.compile(r"[.!?] ")


def _split_ctx(ctx: str) -> tuple[str, str]:
    """(ctx_a, ctx_b), inferred: the dump has no field that marks the split. ctx_b is the
    unfinished sentence the endings complete, which ActivityNet items have and WikiHow items
    (their contexts end a sentence) do not; in the dump exactly 3,243 contexts do not end with
    ".", "!" or "?", the ActivityNet ones. So: a context ending a sentence has ctx_b = "";
    otherwise ctx_b is what follows the last sentence end."""
    if ctx.endswith((".", "!", "?")):
        return ctx, ""
    cut = max((m.end() for m in _SENTENCE_END.finditer(ctx)), default=0)
    return ctx[:cut].rstrip(), ctx[cut:]


def _unbracket(text: str) -> str:
    """Stock's preprocess for text that still holds brackets (the dump dropped only the 4
    markers; stock drops any [...]). Other text is left alone: the dump already did the rest,
    and a second collapse of double spaces would undo ones stock keeps too."""
    from lm_eval.tasks.hellaswag.utils import preprocess

    return preprocess(text) if "[" in text else text
