"""Decoding through any objective's `logits` (with the KV cache): greedy, or sampled.

Each position's random start (objective.noise) is drawn once, when the position enters; with a
`KVCache` a step runs only the newest position: past positions keep their cached keys/values at
every iteration, i.e. their whole trajectory is reused.

The next token comes from the logits `objective.logits` returns at the chosen depth: BPTT's and
the latent objectives' recurrence after K iterations; for DiffusionBlocks the last denoiser
evaluation of the K-step sampler (the prediction at the smallest σ, given the noise the
sampler started from). A DB sample is therefore two draws: the sampler's ε (objective.noise,
seeded per row) and the token drawn from that final distribution (`Sampling`, its own stream).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from huginn_db.model import KVCache
from huginn_db.objectives.base import seed_of, unwrap


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked from the final logits (HF/lm-eval generation kwargs).

    Greedy unless do_sample; then softmax(logits / temperature) restricted to the top_k most
    likely tokens (0: all) and to the smallest set whose probability reaches top_p (1: all).
    temperature → 0 approaches greedy (temperature = 0 is greedy); as in HF `generate`,
    temperature, top_k and top_p without do_sample=True change nothing.
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @classmethod
    def from_kwargs(cls, kwargs: dict) -> Sampling:
        """From generation kwargs (None values mean the default); unknown keys are ignored."""

        def get(key, cast, default):
            value = kwargs.get(key)
            return default if value is None else cast(value)

        def flag(value) -> bool:
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")

        return cls(
            do_sample=get("do_sample", flag, False),
            temperature=get("temperature", float, 1.0),
            top_k=get("top_k", int, 0),
            top_p=get("top_p", float, 1.0),
        )

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

    def pick(self, logits: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """The next token (B,) of last-position logits (B, V); one generator per row."""
        if self.greedy:
            return logits.argmax(-1)
        logits = logits.float() / self.temperature
        if 0 < self.top_k < logits.shape[-1]:
            kth = logits.topk(self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(-1)
            # drop a token once the more likely ones already reach top_p (the first is always kept)
            drop = probs.cumsum(-1) - probs >= self.top_p
            logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        probs = logits.softmax(-1).cpu()
        return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)]).to(logits.device)


PREFILLS = ("parallel", "tokenwise")  # how a prompt enters the KV cache (next_tokens)


def next_tokens(
    objective,
    model,
    prompt_ids: torch.Tensor,
    num_steps: int | None = None,
    seed: int | Sequence[int] = 0,
    use_cache: bool = True,
    sampling: Sampling | None = None,
    sample_seeds: Sequence[int] | None = None,
    kv_slots: int | None = None,
    prefill: str = "parallel",
    **kw,
) -> Iterator[torch.Tensor]:
    """Yields the next token of every row (B,), step after step; the caller stops. Greedy
    unless `sampling` says otherwise.

    Each position's random start (objective.noise) is drawn once, in order, when the position
    enters: from one generator for the batch (int seed) or one per row (a seed per row, so a
    row's draws do not depend on its batch-mates). Sampled tokens come from one more generator
    per row, seeded by `sample_seeds` (default: (row seed, 1)), so a row's samples are a
    function of its seeds alone. kv_slots: the cache's iteration slots (huginn_db.kv_cache). With
    the cache a step runs the newest position only; without it a step reruns the whole sequence
    with the same draws — the same tokens and logits (up to float rounding) at O(length) times
    the core work. prefill="tokenwise" runs the prompt through the cache one position per pass,
    as if it had been generated: in a parallel prefill every position's iteration t attends to
    iteration t of the others, so a shared cache (kv_slots) only acts on what is decoded later.
    """
    if prefill not in PREFILLS:
        raise ValueError(f"prefill must be {'|'.join(PREFILLS)}, got {prefill!r}")
    m = unwrap(model)
    B = prompt_ids.shape[0]
    sampling = sampling or Sampling()
    seeds = [int(s) for s in (seed if isinstance(seed, Sequence) else [seed])]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    if sample_seeds is None:
        sample_seeds = [seed_of(s, 1) for s in (seeds if len(seeds) == B else seeds * B)]
    picks = [torch.Generator().manual_seed(int(s)) for s in sample_seeds]

    def draw(length: int) -> torch.Tensor:
        if len(gens) == 1:
            return objective.noise(m, B, length, gens[0])
        return torch.cat([objective.noise(m, 1, length, g) for g in gens])

    cache = KVCache(kv_slots) if use_cache else None
    ids, noise = prompt_ids, draw(prompt_ids.shape[1])
    new_ids, new_noise = ids, noise
    while True:
        if cache is None:
            logits = objective.logits(model, ids, num_steps, noise=noise, **kw)
        else:  # after the prompt every pass is one position wide, whatever the prefill
            width = 1 if prefill == "tokenwise" else new_ids.shape[1]
            for t in range(0, new_ids.shape[1], width):
                span = slice(t, t + width)
                logits = objective.logits(
                    model, new_ids[:, span], num_steps, noise=new_noise[:, span], cache=cache, **kw
                )
            if isinstance(kw.get("stats"), dict):  # decode memory: cached bytes per position of a row
                kw["stats"]["kv_bytes_per_token"] = cache.nbytes() / (cache.length * B)
        nxt = sampling.pick(logits[:, -1], picks)
        yield nxt
        new_ids, new_noise = nxt[:, None], draw(1)
        if cache is None:
            ids, noise = torch.cat([ids, new_ids], dim=1), torch.cat([noise, new_noise], dim=1)


@torch.no_grad()
def generate(
    objective,
    model,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    eos_id: int,
    num_steps: int | None = None,
    seed: int | Sequence[int] = 0,
    use_cache: bool = True,
    sampling: Sampling | None = None,
    **kw,
) -> torch.Tensor:
    """Decoding of a batch of equal-length prompts (greedy unless `sampling`); stops once every
    row hit EOS. seed, use_cache and sampling as in next_tokens."""
    done = torch.zeros(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
    out = []
    steps = next_tokens(objective, model, prompt_ids, num_steps, seed, use_cache, sampling, **kw)
    for nxt in itertools.islice(steps, max_new_tokens):
        nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
        out.append(nxt)
        done |= nxt == eos_id
        if bool(done.all()):
            break
    return torch.stack(out, dim=1) if out else prompt_ids[:, :0]
