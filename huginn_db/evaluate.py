"""Answer accuracy on the embedded reasoning test set, per difficulty and test-time depth."""

from __future__ import annotations

from collections import defaultdict

import torch

from huginn_db.data.reasoning import ReasoningCorpus, score
from huginn_db.objectives.decoding import generate


@torch.no_grad()
def reasoning_accuracy(
    objective,
    model,
    corpus: ReasoningCorpus,
    num_steps: list[int],
    batch_size: int = 500,
    seed: int = 0,
    device="cpu",
    limit: int | None = None,
    difficulties: list[int] | None = None,
) -> dict[str, dict[str, float]]:
    """{str(K): {'d1': acc, …, 'mean': acc}} for each test-time iteration count K.

    Prompts are grouped by token length so batches need no padding; decoding is greedy and,
    for DiffusionBlocks, seeded (the sampler starts from noise).
    """
    tok = corpus.tokenizer
    examples = corpus.test_set(
        min(limit, corpus.cfg.test_examples) if limit else None
    )  # the first `limit` per difficulty
    if difficulties:
        examples = [ex for ex in examples if ex["difficulty"] in difficulties]
    max_new = max(len(ex["answer"]) for ex in examples) + 1  # and EOS
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
                new = generate(objective, model, ids, max_new, tok.eos_id, num_steps=K, seed=seed)
                for i, row in zip(chunk, new.tolist()):
                    gens[i] = tok.decode(row)
        out[str(K)] = score(examples, gens)
    model.train(was_training)
    return out


@torch.no_grad()
def text_validation(
    objective, model, corpus, num_steps: list[int], batch_size: int, max_batches: int, seed: int = 0, device="cpu"
) -> dict[str, dict[str, float]]:
    """{str(K): {'loss': nats/token, 'ppl': e^loss}} on held-out packed text at each depth K.

    For DiffusionBlocks these are the logits of the last denoiser evaluation of a K-step
    sampler run from noise (K=1: the context-only prediction at σ_max).
    """
    batches = corpus.val_batches(batch_size)[:max_batches]
    was_training = model.training
    model.eval()
    out = {}
    for K in num_steps:
        g = torch.Generator().manual_seed(seed)
        nll, n = 0.0, 0
        for b in batches:
            logits = objective.logits(model, b["input_ids"].to(device), K, generator=g)
            nll += torch.nn.functional.cross_entropy(
                logits.float().flatten(0, 1), b["target_ids"].to(device).flatten(), reduction="sum"
            ).item()
            n += b["target_ids"].numel()
        out[str(K)] = {"loss": nll / n, "ppl": float(torch.tensor(nll / n).exp())}
    model.train(was_training)
    return out


def format_accuracy_table(acc: dict[str, dict[str, float]]) -> str:
    """Markdown rows per test-time depth; works for accuracy and validation-loss dicts alike."""
    cols = list(next(iter(acc.values())).keys())
    lines = ["iters | " + " | ".join(cols), "---" + " | ---" * len(cols)]
    for K, row in acc.items():
        lines.append(f"{K:>5} | " + " | ".join(f"{row[c]:.3f}" for c in cols))
    return "\n".join(lines)


def evaluate(
    cfg,
    objective,
    model,
    corpus,
    device,
    num_steps: list[int] | None = None,
    examples: int | None = None,
    difficulties: list[int] | None = None,
) -> dict:
    """The trainer's scores per test-time depth: answer accuracy (reasoning) or validation loss
    (text). `examples` caps the reasoning test set per difficulty and `difficulties` picks some
    of them (in-training evaluation)."""
    num_steps = num_steps or cfg.eval.num_steps
    if cfg.data.name == "text":
        return {
            "validation": text_validation(
                objective,
                model,
                corpus,
                num_steps,
                cfg.train.micro_batch_size,
                cfg.eval.max_val_batches,
                seed=cfg.seed,
                device=device,
            )
        }
    return {
        "accuracy": reasoning_accuracy(
            objective,
            model,
            corpus,
            num_steps,
            cfg.eval.batch_size,
            seed=cfg.seed,
            device=device,
            limit=examples,
            difficulties=difficulties,
        )
    }
