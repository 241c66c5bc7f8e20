"""lm-eval (0.4.13) model `huginn_db` for the looped models huginn_db trains, and the local tasks.

    python -m huginn_db.lm_eval --model huginn_db \
        --model_args checkpoint=runs/demo/db-seed0,num_steps=8 --tasks reasoning_cups,wikitext2_local
    evaluate("runs/demo/db-seed0", ["reasoning_cups_d8"], [1, 2, 4, 8])   # -> {K: lm-eval results}

`python -m huginn_db.lm_eval` is lm-eval's own CLI with this model registered and the local
tasks (eval/tasks) on the include path. model_args: checkpoint=RUN_OR_EXPORT_DIR,
num_steps=K (BPTT: recurrence r; DB: sampler steps = σ-bands; default: the objective's),
sampler=euler|heun (DB), seed=0, batch_size=8 (wins over --batch_size), dtype=float32|bfloat16
(bf16 autocast over fp32 weights, as in training), device=cpu|cuda (default cuda, the CPU
where there is none; one GPU per rank under a launcher), score=context|final (DB), max_gen_toks=256,
exit=kl:5e-4|entropy:X|latent:X|argmax:N (adaptive exit per position, num_steps the maximum;
huginn_db.objectives.adaptive; `evaluate` adds results["huginn_db"]["mean_iterations"]),
kv_slots=N (generation's KV cache keeps N iterations per position, Huginn's compress-sN),
prefill=parallel|tokenwise (a generation prompt in one pass, or one position per pass through the cache).

Scores (`score_name` says which one a run used)
  recurrence  BPTT: log-probs of the recurrence run for r = num_steps iterations.
  context     DB default: the denoiser's σ_max pass, objective.logits(..., num_steps=1). After
              K Euler steps σ is tiny and the logits are nearly certain of whatever token the
              sampler wrote into z — they describe one sample, not a predictive distribution —
              so likelihoods come from the context-only prediction.
  final       DB, by name only: the last denoiser evaluation of the K-step sampler.
  Generation (generate_until) runs the K-step sampler (DB) / r iterations (BPTT) with the KV
  cache, stopping at EOS, a stop sequence or max_gen_toks; greedy unless the request's
  generation_kwargs say do_sample=True (then temperature, top_k, top_p; see
  huginn_db.objectives.decoding for what a DB sample is).

Randomness: every position starts from a random draw (BPTT initial state, DB ε). A request's
draws come from a generator seeded by (seed, its tokens), so its score does not depend on
batch size, order or rank, and generation sees the same prompt draws that scoring does;
sampled tokens come from a second generator of the same seed. The same prompt with the same
seed gives the same sample: for several samples per prompt, change seed= between runs.

Tokens: every sequence starts with BOS (the prefix token; the reasoning corpus trains on
BOS + prompt); contexts longer than the model context are cut from the left, as HFLM does.
Loglikelihood batches are sorted longest first and right-padded (attention is causal, so
padding after a row's last token changes nothing before it); generation batches prompts of
one length (the model has no padding mask).

Distributed: under torchrun/deepspeed (RANK, WORLD_SIZE set) the model joins the process group
and reports rank/world_size; lm-eval then gives each rank its share of the documents.

Local tasks: eval/tasks/*.yaml name their files as ${HUGINN_DB_DATA}/... and include lm-eval's
own YAMLs as ${LM_EVAL_TASKS}/...; lm-eval wants absolute paths there, so `task_dir` writes
resolved copies (data root: argument, else $HUGINN_DB_DATA, else ../shared/data next to the
repo) once into the temp dir and that directory is the include path.
"""

from __future__ import annotations

from huginn_db.lm_eval.model import DTYPES, HuginnLM
from huginn_db.lm_eval.tasks import (
    REASONING_GROUP,
    REASONING_MAX_DIFFICULTY,
    REPO,
    TASKS_SRC,
    default_data_root,
    default_tasks,
    evaluate,
    main_eval,
    reasoning_difficulties,
    reasoning_tasks,
    result_caveats,
    task_dir,
    task_manager,
)

__all__ = [
    "DTYPES",
    "HuginnLM",
    "REASONING_GROUP",
    "REASONING_MAX_DIFFICULTY",
    "REPO",
    "TASKS_SRC",
    "default_data_root",
    "default_tasks",
    "evaluate",
    "main",
    "main_eval",
    "reasoning_difficulties",
    "reasoning_tasks",
    "result_caveats",
    "task_dir",
    "task_manager",
]


def main(argv: list[str] | None = None) -> None:
    """lm-eval's CLI (`python -m huginn_db.lm_eval`)."""
    from huginn_db.lm_eval.__main__ import main as lm_eval_main

    lm_eval_main(argv)
