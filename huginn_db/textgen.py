"""Samples from a trained text run, and their quality under a judge LM.

The protocol is the DiffusionBlocks paper's (App. E.4, after SEDD): prompts and reference
continuations are cut from the run's held-out text (its own document split, tokenised by the
run's tokenizer: BOS, then consecutive `prompt_tokens + new_tokens` pieces of the EOS-separated
stream), every prompt gets `per_prompt` sampled continuations of exactly `new_tokens` tokens
(EOS does not stop them: the references run on across story boundaries too) at each test-time
depth K, and the samples are scored against the references with huginn_db.judge's metrics.

    huginn-db sample RUN --prompt "Once upon a time" [--num-steps 8] [--new-tokens 50]   print samples
    huginn-db sample RUN --judge DIR [--num-steps 1,4,8] [--prompts 1000] [--per-prompt 5]
        writes RUN/eval/samples_K{K}.jsonl and RUN/eval/text_quality.json

Sampling: --temperature (default 1), --top-k, --top-p; --greedy for argmax decoding. Sample j
of prompt i is seeded by (--seed, i, j), so every sample reproduces on its own.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from huginn_db.errors import ConfigError
from huginn_db.objectives import Sampling, generate
from huginn_db.objectives.base import seed_of

# what text_quality.json records of how its samples were drawn (defaults: the paper's)
PROTOCOL = {
    "prompts": 1000,
    "per_prompt": 5,
    "prompt_tokens": 32,
    "new_tokens": 50,
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "greedy": False,
    "seed": 0,
}


def prompt_set(run: str | Path, n: int, prompt_tokens: int, new_tokens: int) -> list[tuple[list[int], list[int]]]:
    """Up to n (prompt ids, reference continuation ids) pairs from the run's held-out text."""
    from huginn_db.checkpoint import read_config
    from huginn_db.judge import held_out_documents
    from huginn_db.tokenizer import load_tokenizer

    cfg, tok = read_config(run), load_tokenizer(run)
    if prompt_tokens + new_tokens > cfg.model.context:
        raise ConfigError(
            f"prompt + new tokens = {prompt_tokens + new_tokens} exceeds model.context={cfg.model.context}"
        )
    stream = [t for d in held_out_documents(str(run)) for t in [*tok.encode(d), tok.eos_id]]
    L = prompt_tokens + new_tokens
    pairs = [
        (stream[a : a + prompt_tokens], stream[a + prompt_tokens : a + L]) for a in range(0, len(stream) - L + 1, L)
    ]
    if not pairs:
        raise ConfigError(
            f"{run}: its held-out text has {len(stream)} tokens, fewer than one prompt + continuation ({L})"
        )
    return pairs[:n]


@torch.no_grad()
def sample(
    objective,
    model,
    prompts: list[list[int]],
    bos_id: int,
    num_steps: int,
    new_tokens: int,
    per_prompt: int = 1,
    sampling: Sampling | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
) -> list[list[list[int]]]:
    """[prompt][sample] → new token ids; prompts of one length are batched (no padding)."""
    jobs = [(i, j) for i in range(len(prompts)) for j in range(per_prompt)]
    jobs.sort(key=lambda ij: len(prompts[ij[0]]))
    out = [[None] * per_prompt for _ in prompts]
    bar = tqdm(total=len(jobs), desc=f"sample K={num_steps}", disable=not progress)
    for s in range(0, len(jobs), batch_size):
        chunk = jobs[s : s + batch_size]
        groups: dict[int, list] = {}
        for ij in chunk:
            groups.setdefault(len(prompts[ij[0]]), []).append(ij)
        for group in groups.values():
            ids = torch.tensor([[bos_id, *prompts[i]] for i, _ in group])
            seeds = [seed_of(seed, i, j) for i, j in group]
            new = generate(objective, model, ids, new_tokens, -1, num_steps=num_steps, seed=seeds, sampling=sampling)
            for (i, j), row in zip(group, new.tolist()):
                out[i][j] = row
        bar.update(len(chunk))
    bar.close()
    return out


def continuation(tok, prompt: list[int], new: list[int]) -> str:
    """The text `new` adds after `prompt`: decoded in context, so a piece that opens with a
    space keeps it (sentencepiece drops a leading space when a piece is decoded alone)."""
    head, full = tok.decode(prompt), tok.decode([*prompt, *new])
    return full[len(head) :] if full.startswith(head) else tok.decode(new)


def quality(judge, tok, pairs, samples) -> dict:
    """The Table-5-style metrics of samples[prompt][k] against the reference continuations."""
    from huginn_db.judge import distinct_n, mauve_score, unigram_entropy

    prompts = [tok.decode(p) for p, _ in pairs]
    refs = [continuation(tok, p, r) for p, r in pairs]
    flat = [(prompts[i], s) for i, row in enumerate(samples) for s in row]
    texts = [continuation(tok, pairs[i][0], s) for i, row in enumerate(samples) for s in row]
    ctx = [p for p, _ in flat]
    ref_feats, sample_feats = judge.features(refs, prompts), judge.features(texts, ctx)
    return {
        "mauve": mauve_score(ref_feats, sample_feats),
        "mauve_c5": mauve_score(ref_feats, sample_feats, scaling=5),
        "gen_ppl": judge.perplexity(texts, ctx),
        "reference_ppl": judge.perplexity(refs, prompts),
        "entropy": unigram_entropy([s for _, s in flat]),
        "reference_entropy": unigram_entropy([r for _, r in pairs]),
        "distinct_2": distinct_n([s for _, s in flat], 2),
        "distinct_3": distinct_n([s for _, s in flat], 3),
        "reference_distinct_2": distinct_n([r for _, r in pairs], 2),
        "samples": len(flat),
        "prompts": len(pairs),
    }


def main(argv: list[str]) -> int:
    """`huginn-db sample`."""
    ap = argparse.ArgumentParser(
        prog="huginn-db sample", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("run", help="run or export directory of a text model")
    ap.add_argument("--prompt", default=None, help="sample continuations of this text and print them")
    ap.add_argument("--judge", default=None, help="judge LM (hub name or directory): score held-out prompts")
    ap.add_argument("--num-steps", default=None, help="test-time depths, comma-separated (default: the objective's)")
    ap.add_argument("--prompts", type=int, default=PROTOCOL["prompts"], help="held-out prompts (with --judge)")
    ap.add_argument("--per-prompt", type=int, default=PROTOCOL["per_prompt"])
    ap.add_argument("--prompt-tokens", type=int, default=PROTOCOL["prompt_tokens"])
    ap.add_argument("--new-tokens", type=int, default=PROTOCOL["new_tokens"])
    ap.add_argument("--temperature", type=float, default=PROTOCOL["temperature"])
    ap.add_argument("--top-k", type=int, default=PROTOCOL["top_k"])
    ap.add_argument("--top-p", type=float, default=PROTOCOL["top_p"])
    ap.add_argument("--greedy", action="store_true")
    ap.add_argument("--seed", type=int, default=PROTOCOL["seed"])
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args(argv)
    if (args.prompt is None) == (args.judge is None):
        raise ConfigError("give exactly one of --prompt TEXT (print samples) or --judge DIR (score held-out prompts)")
    from huginn_db.checkpoint import load_run
    from huginn_db.tokenizer import load_tokenizer

    try:
        sampling = Sampling(do_sample=not args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
        cfg, model, objective = load_run(args.run)
        tok = load_tokenizer(args.run)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(str(err)) from None
    Ks = [int(k) for k in args.num_steps.split(",")] if args.num_steps else [objective.default_num_steps]
    if args.prompt is not None:
        try:
            ids = tok.encode(args.prompt)
        except ValueError as err:
            raise ConfigError(f"--prompt: {err}") from None
        for K in Ks:
            (row,) = sample(
                objective,
                model,
                [ids],
                tok.bos_id,
                K,
                args.new_tokens,
                args.per_prompt,
                sampling,
                args.seed,
                progress=False,
            )
            for j, s in enumerate(row):
                print(f"[K={K} sample {j}] {args.prompt}{continuation(tok, ids, s)}")
        return 0

    from huginn_db.judge import Judge

    protocol = {k: getattr(args, k) for k in PROTOCOL}
    score_samples(args.run, Judge(args.judge), Ks, protocol, args.batch_size, (model, objective, tok))
    return 0


def is_scored(run: str | Path, judge: str, Ks: list[int], protocol: dict) -> bool:
    """True when RUN/eval/text_quality.json holds these depths under this judge and protocol."""
    path = Path(run) / "eval" / "text_quality.json"
    try:
        have = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return have.get("judge") == judge and have.get("protocol") == protocol and set(have["scores"]) == set(map(str, Ks))


def score_samples(run, judge, Ks: list[int], protocol: dict, batch_size: int = 64, cfg_model=None) -> dict:
    """Samples at each depth K from held-out prompts, scored with the judge; writes
    RUN/eval/samples_K{K}.jsonl and RUN/eval/text_quality.json, returns {K: metrics}."""
    if cfg_model is None:
        from huginn_db.checkpoint import load_run
        from huginn_db.tokenizer import load_tokenizer

        _, model, objective = load_run(str(run))
        tok = load_tokenizer(str(run))
    else:
        model, objective, tok = cfg_model
    pr = {**PROTOCOL, **protocol}
    sampling = Sampling(do_sample=not pr["greedy"], temperature=pr["temperature"], top_k=pr["top_k"], top_p=pr["top_p"])
    pairs = prompt_set(run, pr["prompts"], pr["prompt_tokens"], pr["new_tokens"])
    out = Path(run) / "eval"
    out.mkdir(exist_ok=True)
    results = {}
    for K in Ks:
        samples = sample(
            objective,
            model,
            [p for p, _ in pairs],
            tok.bos_id,
            K,
            pr["new_tokens"],
            pr["per_prompt"],
            sampling,
            pr["seed"],
            batch_size,
        )
        with open(out / f"samples_K{K}.jsonl", "w") as f:
            for (p, r), row in zip(pairs, samples):
                record = {
                    "prompt": tok.decode(p),
                    "reference": continuation(tok, p, r),
                    "samples": [continuation(tok, p, s) for s in row],
                }
                f.write(json.dumps(record) + "\n")
        results[str(K)] = quality(judge, tok, pairs, samples)
        print(f"{run} K={K}: " + ", ".join(f"{k} {v:.4g}" for k, v in results[str(K)].items()), flush=True)
    (out / "text_quality.json").write_text(
        json.dumps({"judge": judge.name, "protocol": pr, "scores": results}, indent=2)
    )
    return results
