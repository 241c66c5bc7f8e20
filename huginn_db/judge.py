"""A judge LM for generated text, and the sample-quality metrics scored with it.

The judge is any causal LM `transformers` loads (`AutoModelForCausalLM` + `AutoTokenizer`, a
hub name or a local directory: gpt2-large or a Llama on a GPU box). Offline, `huginn-db
train-judge` trains one here: a stock GPT-2 built from a config, on the reference corpus minus
the documents a run holds out (so prompts and references are text the judge never saw), with
a byte-level BPE tokenizer from `tokenizers`; both are saved with `save_pretrained`, so real
and home-made judges load the same way.

    huginn-db train-judge --input tinystories/tinystories_val.txt --exclude-run RUN --out runs/judges/ts

Metrics (huginn_db.textgen applies them to samples)
  gen-PPL      exp of the judge's mean negative log-likelihood per judge token of the
               continuations, each conditioned on its prompt (both retokenised by the judge;
               the judge's BOS — GPT-2's <|endoftext|> — is put before the prompt, as GPT-2 was
               trained with a document separator there). Low-entropy, repetitive text gets low
               gen-PPL, so read it next to the entropy; the real continuations' gen-PPL under
               the same judge is the floor.
  MAUVE        `mauve-text` on judge features: the final-layer hidden state at an end-of-text
               token after prompt + continuation (MAUVE's own GPT-2 featurisation takes the
               text's last token; measured here, a small judge's state there encodes little but
               that token's identity: real vs token-shuffled TinyStories windows were 70%
               linearly separable, 79% with the end-of-text token). Scored at the paper's
               scaling factor 0.2 (lenient: two sets must differ a lot to score low) and at
               mauve-text's default 5.
  entropy      unigram entropy (nats) of each sample's own tokens, mean over samples.
  distinct-n   distinct n-grams / all n-grams over all samples.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from huginn_db.errors import ConfigError

MAUVE_SCALING = 0.2  # the DiffusionBlocks paper's (App. E.4, after SEDD); mauve-text's own default is 5


# --- training a judge here ----------------------------------------------------------------------


def _bpe(docs: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer)
    eot = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot, unk_token=eot)


def train_judge(
    files: list[str],
    out: Path,
    exclude: set[str] = frozenset(),
    vocab_size: int = 4096,
    layers: int = 4,
    hidden: int = 256,
    heads: int = 4,
    context: int = 256,
    steps: int = 1500,
    batch_size: int = 16,
    lr: float = 1e-3,
    val_fraction: float = 0.02,
    seed: int = 0,
    data_root: str | None = None,
) -> dict:
    """Trains a GPT-2 judge on the documents of `files` except those in `exclude`; writes the
    model and tokenizer with save_pretrained and judge.json (what it saw, its held-out loss)."""
    from tqdm import tqdm
    from transformers import GPT2Config, GPT2LMHeadModel

    from huginn_db.components.optim import lr_lambda
    from huginn_db.config import TrainConfig
    from huginn_db.data.documents import TextDocuments
    from huginn_db.data.text import TextConfig
    from huginn_db.objectives.base import seed_of

    # its own split, drawn apart from any run's (a run with the same seed splits with `seed`)
    try:  # relative names resolve against $HUGINN_DB_DATA, as a run's data.text.files do
        corpus = TextDocuments(TextConfig(files=list(files), val_fraction=val_fraction, data_root=data_root))
        docs, val_idx, train_idx = corpus.split(seed_of(seed, 1))
    except ValueError as err:
        raise ConfigError(f"train-judge: {err}") from None
    kept = [i for i in train_idx if docs[i][1] not in exclude]
    tok = _bpe([docs[i][1] for i in kept], vocab_size)

    def stream(idx):  # <|endoftext|> before every document, as GPT-2 trains; labels = inputs (HF shifts)
        ids = [t for i in idx for t in [tok.eos_token_id, *tok.encode(docs[i][1])]]
        n = len(ids) // context
        if n == 0:
            raise ConfigError(f"train-judge: {len(ids)} tokens cannot fill one window of {context}")
        return torch.tensor(ids[: n * context]).view(n, context)

    train, val = stream(kept), stream([i for i in val_idx if docs[i][1] not in exclude])
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=context,
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    schedule = TrainConfig(warmup_steps=max(1, steps // 20), max_steps=steps, min_lr_ratio=0.0)  # cosine
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(schedule))
    g = torch.Generator().manual_seed(seed)
    start, bar = time.time(), tqdm(range(steps), desc="judge")
    model.train()
    for _ in bar:
        batch = train[torch.randint(len(train), (batch_size,), generator=g)]
        loss = model(batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        val_loss = float(
            np.mean([model(val[i : i + 16], labels=val[i : i + 16]).loss.item() for i in range(0, len(val), 16)])
        )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    info = {
        "files": [str(f) for f in files],
        "documents": len(kept),
        "excluded_documents": len(train_idx) - len(kept),
        "excluded_sha256": excluded_digest(exclude),
        "train_tokens": int(train.numel()),
        "params": sum(p.numel() for p in model.parameters()),
        "steps": steps,
        "final_train_loss": loss.item(),
        "val_loss": val_loss,
        "val_ppl": math.exp(val_loss),
        "seconds": time.time() - start,
    }
    (out / "judge.json").write_text(json.dumps(info, indent=2))
    return info


def excluded_digest(exclude) -> str:
    """Names the set of documents a judge was trained without."""
    return hashlib.sha256("\0".join(sorted(exclude)).encode()).hexdigest()


def ensure_judge(out: Path, files: list[str], exclude: set[str], steps: int, data_root: str | None = None) -> Path:
    """The judge in `out` if it was trained on `files` for `steps` without exactly `exclude`;
    else trains it there (the study's judge: trained once, reused by a rerun)."""
    try:
        have = json.loads((out / "judge.json").read_text())
    except (OSError, ValueError):
        have = {}
    want = {"files": [str(f) for f in files], "steps": steps, "excluded_sha256": excluded_digest(exclude)}
    if any(have.get(k) != v for k, v in want.items()):
        print(f"training the judge LM in {out} ({steps} steps)", flush=True)
        train_judge(files, out, exclude, steps=steps, data_root=data_root)
    return out


# --- using a judge --------------------------------------------------------------------------------


class Judge:
    """A causal LM and its tokenizer, loaded with transformers' Auto classes."""

    def __init__(self, name_or_path: str, device: str | None = None, batch_size: int = 16):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(name_or_path)
            self.model = AutoModelForCausalLM.from_pretrained(name_or_path)
        except (OSError, ValueError) as err:
            raise ConfigError(f"judge {name_or_path!r} could not be loaded: {str(err).splitlines()[0]}") from None
        self.name, self.batch_size = name_or_path, batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()
        bos = self.tok.bos_token_id if self.tok.bos_token_id is not None else self.tok.eos_token_id
        self.bos = [] if bos is None else [bos]
        self.max_length = getattr(self.model.config, "n_positions", None) or self.tok.model_max_length

    def _rows(self, prompts: list[str], texts: list[str]) -> list[tuple[list[int], int]]:
        """(BOS + prompt + continuation ids cut to the judge's context from the left, number of
        continuation tokens) per text."""
        rows = []
        for p, t in zip(prompts, texts):
            ctx, cont = (
                self.bos + self.tok.encode(p, add_special_tokens=False),
                self.tok.encode(t, add_special_tokens=False),
            )
            cont = cont[: self.max_length - 1]
            rows.append(((ctx + cont)[-self.max_length :], len(cont)))
        return rows

    @torch.no_grad()
    def _forward(self, rows: list[list[int]]):
        T = max(map(len, rows))
        ids = torch.full((len(rows), T), self.bos[0] if self.bos else 0, dtype=torch.long)
        mask = torch.zeros(len(rows), T, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        out = self.model(ids.to(self.device), attention_mask=mask.to(self.device), output_hidden_states=True)
        return out.logits.float(), out.hidden_states[-1].float()

    def nll(self, texts: list[str], prompts: list[str] | None = None) -> list[tuple[float, int]]:
        """(summed negative log-likelihood in nats, tokens) of each text's tokens given its prompt."""
        rows = self._rows(prompts or [""] * len(texts), texts)
        out = []
        for s in range(0, len(rows), self.batch_size):
            chunk = rows[s : s + self.batch_size]
            logits, _ = self._forward([r for r, _ in chunk])
            logp = torch.log_softmax(logits, -1)
            for i, (r, n) in enumerate(chunk):
                if n == 0:
                    out.append((0.0, 0))
                    continue
                target = torch.tensor(r[len(r) - n :], device=logp.device)
                out.append((-float(logp[i, len(r) - n - 1 : len(r) - 1].gather(-1, target[:, None]).sum()), n))
        return out

    def perplexity(self, texts: list[str], prompts: list[str] | None = None) -> float:
        """exp(total NLL / total tokens): generative perplexity of continuations given prompts."""
        scored = self.nll(texts, prompts)
        tokens = sum(n for _, n in scored)
        return math.exp(sum(s for s, _ in scored) / tokens) if tokens else float("nan")

    def features(self, texts: list[str], prompts: list[str] | None = None) -> np.ndarray:
        """(N, hidden) final-layer hidden state at an end-of-text token put after each text
        (MAUVE featurises the last token; a text's own last token is wherever it was cut, and
        a small judge's state there mostly says which token that is)."""
        end = [self.tok.eos_token_id] if self.tok.eos_token_id is not None else []
        rows = [(r + end)[-self.max_length :] for r, _ in self._rows(prompts or [""] * len(texts), texts)]
        feats = []
        for s in range(0, len(rows), self.batch_size):
            chunk = rows[s : s + self.batch_size]
            _, hidden = self._forward(chunk)
            feats += [hidden[i, len(r) - 1].cpu().numpy() for i, r in enumerate(chunk)]
        return np.stack(feats)


def mauve_score(
    p_features: np.ndarray, q_features: np.ndarray, scaling: float = MAUVE_SCALING, seed: int = 25
) -> float:
    """MAUVE (mauve-text) between reference features p and sample features q."""
    import mauve

    out = mauve.compute_mauve(
        p_features=p_features,
        q_features=q_features,
        mauve_scaling_factor=scaling,
        device_id=-1,
        verbose=False,
        seed=seed,
    )
    return float(out.mauve)


def unigram_entropy(samples: list[list[int]]) -> float:
    """Mean over samples of the entropy (nats) of the sample's own token frequencies."""
    ents = []
    for s in samples:
        if s:
            p = np.array(list(Counter(s).values()), dtype=np.float64) / len(s)
            ents.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(ents)) if ents else float("nan")


def distinct_n(samples: list[list[int]], n: int) -> float:
    """Distinct n-grams over all n-grams of all samples (1: no repeated n-gram anywhere)."""
    grams = [tuple(s[i : i + n]) for s in samples for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


# --- command ------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """`huginn-db train-judge`."""
    ap = argparse.ArgumentParser(
        prog="huginn-db train-judge", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--input", nargs="+", required=True, metavar="FILE", help="reference corpus (relative: $HUGINN_DB_DATA)"
    )
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--exclude-run", nargs="*", default=[], metavar="RUN", help="leave out these runs' held-out documents"
    )
    for flag, kind, default in (
        ("--vocab-size", int, 4096),
        ("--layers", int, 4),
        ("--hidden", int, 256),
        ("--heads", int, 4),
        ("--context", int, 256),
        ("--steps", int, 1500),
        ("--batch-size", int, 16),
        ("--lr", float, 1e-3),
        ("--seed", int, 0),
    ):
        ap.add_argument(flag, type=kind, default=default)
    args = ap.parse_args(argv)
    exclude = set()
    for run in args.exclude_run:
        exclude |= set(held_out_documents(run))
    info = train_judge(
        args.input,
        Path(args.out),
        exclude,
        vocab_size=args.vocab_size,
        layers=args.layers,
        hidden=args.hidden,
        heads=args.heads,
        context=args.context,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    print(json.dumps(info, indent=2))
    return 0


def held_out_documents(run: str) -> list[str]:
    """The documents a text run held out (its own split)."""
    from huginn_db.checkpoint import read_config
    from huginn_db.data.documents import run_held_out

    cfg = read_config(run)
    if cfg.data.name != "text":
        raise ConfigError(f"{run} is not a text run (data.name={cfg.data.name})")
    try:
        return [d for _, d in run_held_out(cfg)]
    except ValueError as err:
        raise ConfigError(str(err)) from None
