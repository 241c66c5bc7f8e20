"""Greedy decoding through any objective's `logits` (with the KV cache).

Each position's random start (objective.noise) is drawn once, when the position enters; with a
`KVCache` a step runs only the newest position: past positions keep their cached keys/values at
every iteration, i.e. their whole trajectory is reused.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import torch

from huginn_db.model import KVCache
from huginn_db.objectives.base import unwrap


def greedy_tokens(
    objective,
    model,
    prompt_ids: torch.Tensor,
    num_steps: int | None = None,
    seed: int | Sequence[int] = 0,
    use_cache: bool = True,
    **kw,
) -> Iterator[torch.Tensor]:
    """Yields the greedy next token of every row (B,), step after step; the caller stops.

    Each position's random start (objective.noise) is drawn once, in order, when the position
    enters: from one generator for the batch (int seed) or one per row (a seed per row, so a
    row's draws do not depend on its batch-mates). With the cache a step runs the newest
    position only; without it a step reruns the whole sequence with the same draws — the same
    tokens and logits (up to float rounding) at O(length) times the core work.
    """
    m = unwrap(model)
    B = prompt_ids.shape[0]
    gens = [torch.Generator().manual_seed(int(s)) for s in (seed if isinstance(seed, Sequence) else [seed])]

    def draw(length: int) -> torch.Tensor:
        if len(gens) == 1:
            return objective.noise(m, B, length, gens[0])
        return torch.cat([objective.noise(m, 1, length, g) for g in gens])

    cache = KVCache() if use_cache else None
    ids, noise = prompt_ids, draw(prompt_ids.shape[1])
    new_ids, new_noise = ids, noise
    while True:
        if cache is None:
            logits = objective.logits(model, ids, num_steps, noise=noise, **kw)
        else:
            logits = objective.logits(model, new_ids, num_steps, noise=new_noise, cache=cache, **kw)
        nxt = logits[:, -1].argmax(-1)
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
    **kw,
) -> torch.Tensor:
    """Greedy decoding of a batch of equal-length prompts; stops once every row hit EOS.

    seed and use_cache as in greedy_tokens: cached and uncached decoding give the same tokens.
    """
    done = torch.zeros(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
    out = []
    steps = greedy_tokens(objective, model, prompt_ids, num_steps, seed, use_cache, **kw)
    for nxt in itertools.islice(steps, max_new_tokens):
        nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
        out.append(nxt)
        done |= nxt == eos_id
        if bool(done.all()):
            break
    return torch.stack(out, dim=1) if out else prompt_ids[:, :0]
