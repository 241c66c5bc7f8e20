"""Mixtures of prepared sets: a deterministic sample → (set, window) map in the weights' shares,
every set's windows once per its epoch, exact sharding and resume, and one-line refusals."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from huginn_db.data import prepared as P
from huginn_db.data.documents import prepared_held_out
from huginn_db.data.mixture import Blend
from huginn_db.data.text import TextConfig, TextCorpus
from tests.conftest import RECIPES, clean_env, metrics
from tests.test_prepared import TINY_TEXT_RUN
from tests.test_text_data import _docs, _jsonl


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _sets(tmp_path) -> tuple[TextConfig, list[str]]:
    """Two prepared sets of different documents (120 of length 7, 60 of length 11)."""
    roots = []
    for name, n, length, seed in (("a", 120, 7, 0), ("b", 60, 11, 1)):
        path = _jsonl(tmp_path / f"{name}.jsonl", _docs(n, length=length, seed=seed))
        text = TextConfig(files=[str(path)], seq_len=9, val_fraction=0.1)
        P.prepare(text, 0, tmp_path / name, shard_docs=16, progress=False)
        roots.append(str(tmp_path / name))
    return TextConfig(seq_len=9, val_fraction=0.1), roots


def _mixture(base: TextConfig, roots, weights, seed=0) -> TextCorpus:
    return TextCorpus(TextConfig(**{**vars(base), "mixture": roots, "mixture_weights": weights}), seed)


def test_the_blend_keeps_every_prefix_within_one_sample_of_the_weights_and_counts_each_set_in_order():
    blend = Blend([3.0, 1.0, 0.5], period=1000)
    sets, k = blend(np.arange(2500))
    share = np.array([3, 1, 0.5]) / 4.5
    for s in range(3):
        seen = np.cumsum(sets[:1000] == s)
        assert np.all(np.abs(seen - share[s] * np.arange(1, 1001)) <= 1)  # the first period
        assert np.array_equal(k[sets == s], np.arange((sets == s).sum()))  # the set's samples in order
    far = np.arange(10**9, 10**9 + 2500)  # a pure function of the index: step 10^9 costs what step 0 does
    s2, k2 = blend(far)
    assert np.array_equal(s2, sets[far % 1000]) and np.array_equal(k2, 10**6 * blend.counts[s2] + k)
    with pytest.raises(ValueError, match="below 1/1000"):
        Blend([1.0, 1e-4], period=1000)


def test_a_mixture_trains_on_each_set_in_its_share_every_window_once_per_epoch_sharded_by_rank(tmp_path):
    base, roots = _sets(tmp_path)
    one = TextCorpus(TextConfig(**{**vars(base), "prepared": roots[0]}), 0)
    alone = _mixture(base, roots[:1], [1.0])
    for step in range(5):  # a mixture of one set is the plain prepared run
        assert torch.equal(alone.train_batch(4, step)["input_ids"], one.train_batch(4, step)["input_ids"])

    mix = _mixture(base, roots, [3.0, 1.0])
    inputs = [{tuple(w[:-1]) for w in s[0 : len(s)].tolist()} for s in mix._sets]
    steps = 200  # 2 ranks × 2 micro-batches of 3: 2400 samples
    rows = [
        tuple(r)
        for step in range(steps)
        for m in (0, 1)
        for rk in (0, 1)
        for r in mix.train_batch(3, step, m, rk, 2, 2)["input_ids"].tolist()
    ]
    got = [[r for r in rows if r in w] for w in inputs]
    assert len(got[0]) + len(got[1]) == len(rows) and abs(len(got[0]) / len(rows) - 0.75) < 1e-3
    for s, w in enumerate(inputs):  # each set's first epoch: every window once
        assert len(got[s]) > len(w) and set(got[s][: len(w)]) == w
    # exact sharding: 2 ranks × 1 micro-batch are 1 rank's 2 micro-batches; a fresh corpus agrees
    fresh = _mixture(base, roots, [3.0, 1.0])
    for step in (0, 7, 10**5):
        two = [mix.train_batch(3, step, 0, r, 2, 1)["input_ids"] for r in (0, 1)]
        assert torch.equal(torch.cat(two), fresh.train_batch(6, step, 0, 0, 1, 1)["input_ids"])
    val = torch.cat([b["input_ids"] for b in mix.val_batches(5)])
    assert len(val) == mix.num_val_sequences == sum(map(len, mix._vals))


def test_a_mixture_that_does_not_fit_is_refused_in_one_line(tmp_path, spm_tok):
    base, roots = _sets(tmp_path)
    cases = [
        ({"mixture": roots, "mixture_weights": [1.0]}, r"2 set\(s\) but mixture_weights has 1"),
        ({"mixture": roots, "mixture_weights": [1.0, -1.0]}, "must be positive"),
        ({"mixture": roots, "mixture_weights": [1.0, 1.0], "prepared": roots[0]}, "prepared and mixture are both set"),
    ]
    for kw, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            TextConfig(**{**vars(base), **kw})
        assert "\n" not in str(err.value)
    for kw, message in (
        ({"tokenizer": str(spm_tok.model_path)}, "data.text.mixture: .*/a was tokenized with reasoning"),
        ({"mixture": [roots[0], str(tmp_path)]}, f"data.text.mixture: {tmp_path} is not a prepared set"),
        ({"seq_len": 200}, "the .*/a val split has 96 tokens but one sequence needs"),
    ):
        with pytest.raises(ValueError, match=message) as err:
            TextCorpus(TextConfig(**{**vars(base), "mixture": roots, "mixture_weights": [1.0, 1.0], **kw}), 0)
        assert "\n" not in str(err.value)


@pytest.mark.slow
def test_training_on_a_mixture_resumes_bitwise_and_its_text_tasks_score_what_it_held_out(tmp_path):
    base, roots = _sets(tmp_path)
    recipe = str(RECIPES / "text-small-db.yaml")
    common = [
        f"data.text.mixture=[{','.join(roots)}]",
        "data.text.mixture_weights=[2,1]",
        "data.text.tokenizer=reasoning",
        "data.text.seq_len=9",
        "model.vocab_size=32",
        "model.context=16",
        *TINY_TEXT_RUN,
        "train.schedule=constant",  # so the resume may move max_steps (extend_ok)
    ]

    def train(run, *extra):
        cmd = [sys.executable, "-m", "huginn_db.cli", "train", recipe, f"run_dir={tmp_path / run}", *common, *extra]
        proc = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return [r["loss"] for r in metrics(tmp_path / run) if "loss" in r]

    whole = train("whole", "train.max_steps=6")
    train("resumed", "train.max_steps=3", "train.save_every=3")
    assert train("resumed", "train.max_steps=6", "train.extend_ok=true", "resume=auto") == whole
    sys.path.insert(0, str(RECIPES.parent / "eval" / "tasks"))
    from utils import held_out

    for name, root in zip("ab", roots):  # each set's own held-out documents, read from the set
        want = [d for _, d in prepared_held_out(root)]
        assert len(want) == {"a": 12, "b": 6}[name]
        assert held_out(str(tmp_path / f"{name}.jsonl"), str(tmp_path / "whole")) == want
