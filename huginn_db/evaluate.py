"""Answer accuracy on the embedded reasoning test set, per difficulty and test-time depth."""
from __future__ import annotations

from collections import defaultdict

import torch

from huginn_db.data.reasoning import ReasoningCorpus, score
from huginn_db.objectives import generate


@torch.no_grad()
def reasoning_accuracy(objective, model, corpus: ReasoningCorpus, num_steps: list[int],
                       batch_size: int = 500, seed: int = 0, device="cpu") -> dict[str, dict[str, float]]:
    """{str(K): {'d1': acc, …, 'mean': acc}} for each test-time iteration count K.

    Prompts are grouped by token length so batches need no padding; decoding is greedy and,
    for DiffusionBlocks, seeded (the sampler starts from noise).
    """
    tok, examples = corpus.tokenizer, corpus.test_set()
    groups = defaultdict(list)
    for i, ex in enumerate(examples):
        groups[len(ex["prompt"])].append(i)
    was_training = model.training
    model.eval()
    out = {}
    for K in num_steps:
        gens = [""] * len(examples)
        for idxs in groups.values():
            for j in range(0, len(idxs), batch_size):
                chunk = idxs[j : j + batch_size]
                ids = torch.tensor([[tok.bos_id] + tok.encode(examples[i]["prompt"]) for i in chunk], device=device)
                new = generate(objective, model, ids, corpus.max_answer_tokens(), tok.eos_id, num_steps=K, seed=seed)
                for i, row in zip(chunk, new.tolist()):
                    gens[i] = tok.decode(row)
        out[str(K)] = score(examples, gens)
    model.train(was_training)
    return out


def format_accuracy_table(acc: dict[str, dict[str, float]]) -> str:
    cols = list(next(iter(acc.values())).keys())
    lines = ["iters | " + " | ".join(cols), "---" + " | ---" * len(cols)]
    for K, row in acc.items():
        lines.append(f"{K:>5} | " + " | ".join(f"{row[c]:.3f}" for c in cols))
    return "\n".join(lines)
