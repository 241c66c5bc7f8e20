"""lm-eval (0.4.13) model `huginn_db` for the looped models huginn_db trains, and the local tasks.

    python -m huginn_db.lm_eval --model huginn_db \
        --model_args checkpoint=runs/demo/db-seed0,num_steps=8 --tasks reasoning_cups,wikitext2_local
    evaluate("runs/demo/db-seed0", ["reasoning_cups_d8"], [1, 2, 4, 8])   # -> {K: lm-eval results}

`python -m huginn_db.lm_eval` is lm-eval's own CLI with this model registered and the local
tasks (eval/tasks) on the include path. model_args: checkpoint=RUN_OR_EXPORT_DIR,
num_steps=K (BPTT: recurrence r; DB: sampler steps = σ-bands; default: the objective's),
sampler=euler|heun (DB), seed=0, batch_size=8 (wins over --batch_size), dtype=float32|bfloat16
(bf16 autocast over fp32 weights, as in training), device=cpu|cuda (default cuda, the CPU
where there is none; one GPU per rank under a launcher), score=context|final (DB), max_gen_toks=256.

Scores (`score_name` says which one a run used)
  recurrence  BPTT: log-probs of the recurrence run for r = num_steps iterations.
  context     DB default: the denoiser's σ_max pass, objective.logits(..., num_steps=1). After
              K Euler steps σ is tiny and the logits are nearly certain of whatever token the
              sampler wrote into z — they describe one sample, not a predictive distribution —
              so likelihoods come from the context-only prediction.
  final       DB, by name only: the last denoiser evaluation of the K-step sampler.
  Generation (generate_until) is greedy through the K-step sampler (DB) / r iterations
  (BPTT) with the KV cache, stopping at EOS, a stop sequence or max_gen_toks.

Randomness: every position starts from a random draw (BPTT initial state, DB ε). A request's
draws come from a generator seeded by (seed, its tokens), so its score does not depend on
batch size, order or rank, and generation sees the same prompt draws that scoring does.

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

import contextlib
import hashlib
import itertools
import logging
import os
import shutil
import sys
import tempfile
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window, simple_parse_args_string
from tqdm import tqdm

from huginn_db.checkpoint import load_run, read_config
from huginn_db.objectives import greedy_tokens
from huginn_db.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
TASKS_SRC = REPO / "eval" / "tasks"
DTYPES = {"float32": None, "bfloat16": torch.bfloat16}  # None: no autocast


# --- local tasks ------------------------------------------------------------------------------

def default_data_root() -> Path:
    return Path(os.environ.get("HUGINN_DB_DATA") or REPO.parent / "shared" / "data").resolve()


REASONING_MAX_DIFFICULTY = 16  # reasoning_<family>_d1 … _d16
REASONING_GROUP = range(1, 9)  # reasoning_<family>: d1–d8


def reasoning_tasks() -> dict[str, str]:
    """{file name: YAML} of the generated reasoning tasks: one per registered family and
    difficulty, plus a group per generated family (jsonl's difficulties are the user's)."""
    from huginn_db.data.families import FAMILIES

    files = {}
    for family in FAMILIES:
        for d in range(1, REASONING_MAX_DIFFICULTY + 1):
            files[f"reasoning_{family}_d{d}.yaml"] = (f"include: _reasoning_template_yaml\ntask: reasoning_{family}_d{d}\n"
                                                     f"dataset_kwargs:\n  family: {family}\n  difficulty: {d}\n")
        if family != "jsonl":
            members = ", ".join(f"reasoning_{family}_d{d}" for d in REASONING_GROUP)
            files[f"reasoning_{family}.yaml"] = (f"group: reasoning_{family}\ntask: [{members}]\naggregate_metric_list:\n"
                                                f"  - metric: exact_match\n    aggregation: mean\n    weight_by_size: true\n"
                                                f"metadata:\n  version: 2.0\n")
    return files


def task_dir(data_root: str | Path | None = None) -> Path:
    """eval/tasks with ${HUGINN_DB_DATA} and ${LM_EVAL_TASKS} made absolute, plus the
    generated reasoning tasks (`reasoning_tasks`), for include_path.

    Written once per (data root, lm-eval install, task sources) under the temp dir; a rename
    publishes it whole, so concurrent ranks never read a half-written copy.
    """
    import lm_eval.tasks

    root = Path(data_root).resolve() if data_root else default_data_root()
    stock = Path(lm_eval.tasks.__file__).resolve().parent
    sources = sorted(p for p in TASKS_SRC.iterdir() if p.is_file() and (p.suffix in (".yaml", ".py") or p.name.endswith("_yaml")))
    generated = reasoning_tasks()
    digest = hashlib.sha256(f"{root}\n{stock}".encode())
    for p in sources:
        digest.update(p.name.encode() + p.read_bytes())
    for name, text in generated.items():
        digest.update(name.encode() + text.encode())
    out = Path(tempfile.gettempdir()) / "huginn_db_tasks" / digest.hexdigest()[:16]
    if out.is_dir():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent))
    for p in sources:
        text = p.read_text(encoding="utf-8").replace("${HUGINN_DB_DATA}", str(root)).replace("${LM_EVAL_TASKS}", str(stock))
        (staging / p.name).write_text(text, encoding="utf-8")
    for name, text in generated.items():
        (staging / name).write_text(text, encoding="utf-8")
    try:
        staging.rename(out)
    except OSError:  # another process published the same copy first
        shutil.rmtree(staging)
    return out


def default_tasks(cfg) -> list[str]:
    """The recipe's own benchmark: one task per test difficulty of its reasoning family (the
    difficulty × depth matrix of the report), or validation perplexity for text."""
    if cfg.data.name != "reasoning":
        return ["tinystories_local"]
    r = cfg.data.reasoning
    return [f"reasoning_{r.family}_d{d}" for d in r.test_difficulties]


# --- the model --------------------------------------------------------------------------------

def _distributed(device_type: str) -> tuple[int, int]:
    """(rank, world_size) from the launcher's environment; joins the process group if needed."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return int(os.environ.get("RANK", 0)), world


@register_model("huginn_db")
class HuginnLM(TemplateLM):
    """A huginn_db run or export directory as an lm-eval model (see the module docstring)."""

    def __init__(self, checkpoint: str, num_steps: int | None = None, sampler: str | None = None,
                 seed: int = 0, batch_size: int | str = 8, dtype: str = "float32",
                 device: str | None = None, score: str | None = None, max_gen_toks: int = 256):
        super().__init__()
        cfg, model, objective = load_run(checkpoint)
        self.objective, self.tok = objective, load_tokenizer(checkpoint)
        if self.tok.vocab_size > cfg.model.vocab_size:
            raise ValueError(f"{checkpoint}: tokenizer has {self.tok.vocab_size} tokens, the model {cfg.model.vocab_size}")
        if objective.name == "diffusion_blocks":
            self.score_name = score or "context"
            if self.score_name not in ("context", "final"):
                raise ValueError(f"score must be context|final for a DiffusionBlocks model, got {score!r}")
            self.sampler = sampler or objective.cfg.sampler
            if self.sampler not in ("euler", "heun"):
                raise ValueError(f"sampler must be euler|heun, got {sampler!r}")
            self._sampler_kw = {"sampler": self.sampler}
        else:
            if score not in (None, "recurrence") or sampler is not None:
                raise ValueError("score= and sampler= apply to DiffusionBlocks models; a BPTT model scores its recurrence")
            self.score_name, self.sampler, self._sampler_kw = "recurrence", None, {}
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if str(batch_size).startswith("auto"):
            raise ValueError("batch_size=auto is not supported; give a number")
        self.num_steps = int(num_steps) if num_steps else objective.default_num_steps
        self.seed, self.batch_size, self.max_gen_toks = int(seed), int(batch_size), int(max_gen_toks)
        self._autocast_dtype = DTYPES[dtype]

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            log.warning("CUDA is not available; evaluating on the CPU")  # lm-eval's CLI asks for cuda:0 by default
            device = torch.device("cpu")
        self._rank, self._world_size = _distributed(device.type)
        if device.type == "cuda" and self._world_size > 1:  # one GPU per rank, whatever index the CLI passed
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        self._device = device
        self.model = model.to(self._device)
        self.context_len = cfg.model.context
        self._warned_sampling = False

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        """As lm-eval's, except that model_args win over the CLI's --batch_size/--device (the
        CLI always passes a batch size, which would otherwise clash with batch_size=)."""
        extra = {k: v for k, v in (additional_config or {}).items()
                 if v is not None and k not in arg_dict and k != "max_batch_size"}  # max_batch_size: for batch_size=auto only
        return cls(**arg_dict, **extra)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    # -- TemplateLM plumbing --
    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tok.bos_id

    @property
    def max_length(self) -> int:
        return self.context_len

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """Token ids, BOS first unless add_special_tokens=False."""
        ids = self.tok.encode(string)
        return ids if add_special_tokens is False else [self.tok.bos_id] + ids

    def tok_decode(self, tokens) -> str:
        return self.tok.decode(tokens)

    # -- the model's randomness --
    def request_seed(self, tokens: list[int]) -> int:
        """Seed of a request's random draws: a function of (seed, its tokens) only."""
        key = zlib.crc32(np.asarray(tokens, dtype=np.int64).tobytes())
        return int(np.random.SeedSequence([self.seed, key]).generate_state(1)[0])

    def noise(self, tokens: list[int]) -> torch.Tensor:
        """The per-position random draws (1, T, h) a request over these tokens gets."""
        g = torch.Generator().manual_seed(self.request_seed(tokens))
        return self.objective.noise(self.model, 1, len(tokens), g)

    def _autocast(self):
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self._device.type, dtype=self._autocast_dtype)

    @torch.no_grad()
    def _logprobs(self, rows: list[list[int]]) -> torch.Tensor:
        """Next-token log-probs (B, T, V) of right-padded rows under the chosen score."""
        T = max(map(len, rows))
        ids = torch.full((len(rows), T), self.tok.pad_id, dtype=torch.long)
        noise = torch.zeros(len(rows), T, self.model.cfg.hidden)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            noise[i, : len(r)] = self.noise(r)[0]
        steps = 1 if self.score_name == "context" else self.num_steps
        with self._autocast():
            logits = self.objective.logits(self.model, ids.to(self._device), steps, noise=noise, **self._sampler_kw)
        return F.log_softmax(logits.float(), dim=-1)

    # -- requests --
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """Empty continuations score (0.0, True); TemplateLM would index their empty token list."""
        scored = [r for r in requests if r.args[1]]
        results = iter(super().loglikelihood(scored, disable_tqdm) if scored else [])
        return [next(results) if r.args[1] else (0.0, True) for r in requests]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: (cache key or None, context ids, continuation ids).

        A continuation longer than the model context is scored in pieces of at most
        max_length tokens, each conditioned on as much preceding text as fits.
        """
        L = self.context_len
        pieces = [(i, ctx + cont[:a], cont[a : a + L]) for i, (_, ctx, cont) in enumerate(requests)
                  for a in range(0, len(cont), L)]
        # longest first (as HFLM): the first batch shows the peak memory, padding stays small
        pieces.sort(key=lambda p: (-len(p[1]) - len(p[2]), tuple(p[1] + p[2])))
        logprob, greedy = [0.0] * len(requests), [True] * len(requests)
        bar = tqdm(total=len(pieces), desc="huginn_db loglikelihood", disable=disable_tqdm or self.rank != 0)
        for start in range(0, len(pieces), self.batch_size):
            chunk = pieces[start : start + self.batch_size]
            rows = [(ctx + cont)[-(L + 1) :][:-1] for _, ctx, cont in chunk]
            logprobs = self._logprobs(rows)
            for row, ((i, _, cont), inp) in enumerate(zip(chunk, rows)):
                lp = logprobs[row, len(inp) - len(cont) : len(inp)]
                target = torch.tensor(cont, device=lp.device)
                logprob[i] += float(lp.gather(-1, target[:, None]).sum())
                greedy[i] &= bool((lp.argmax(-1) == target).all())
            bar.update(len(chunk))
        bar.close()
        out = list(zip(logprob, greedy))
        for (key, _, _), result in zip(requests, out):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Sum over disjoint windows of at most max_length predicted tokens, each conditioned on
        as much preceding text as fits (BOS before the first): every token scored once."""
        windows, owner = [], []
        for i, req in enumerate(requests):
            tokens = self.tok_encode(req.args[0], add_special_tokens=False)
            for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1)):
                windows.append((None, ctx, cont))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (ll, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm)):
            totals[i] += ll
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        prepared, by_length = [], defaultdict(list)
        for i, req in enumerate(requests):
            context, kwargs = req.args
            kwargs = dict(kwargs)
            until = kwargs.pop("until", None) or []
            until = [u for u in ([until] if isinstance(until, str) else until) if u]
            if (kwargs.get("do_sample") or (kwargs.get("temperature") or 0) > 0) and not self._warned_sampling:
                log.warning("huginn_db decodes greedily; do_sample/temperature are ignored")
                self._warned_sampling = True
            max_gen = min(int(kwargs.get("max_gen_toks", self.max_gen_toks)), self.context_len - 1)
            tokens = self.tok_encode(context)[-(self.context_len - max_gen) :]
            prepared.append((tokens, until, max_gen))
            by_length[len(tokens)].append(i)
        out: list[str | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="huginn_db generate_until", disable=disable_tqdm or self.rank != 0)
        for length in sorted(by_length, reverse=True):
            group = by_length[length]
            for start in range(0, len(group), self.batch_size):
                chunk = group[start : start + self.batch_size]
                for i, text in zip(chunk, self._generate([prepared[i] for i in chunk])):
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(chunk))
        bar.close()
        return out

    @torch.no_grad()
    def _generate(self, batch: list[tuple[list[int], list[str], int]]) -> list[str]:
        """Greedy continuations of equal-length prompts, each row stopping on its own."""
        ids = torch.tensor([tokens for tokens, _, _ in batch], device=self._device)
        seeds = [self.request_seed(tokens) for tokens, _, _ in batch]
        new: list[list[int]] = [[] for _ in batch]
        done = [max_gen == 0 for _, _, max_gen in batch]
        steps = greedy_tokens(self.objective, self.model, ids, self.num_steps, seeds, use_cache=True, **self._sampler_kw)
        with self._autocast():
            for nxt in itertools.islice(steps, max(max_gen for _, _, max_gen in batch)):
                for j, t in enumerate(nxt.tolist()):
                    if done[j]:
                        continue
                    if t == self.tok.eos_id:
                        done[j] = True
                        continue
                    new[j].append(t)
                    _, until, max_gen = batch[j]
                    done[j] = len(new[j]) >= max_gen or any(u in self.tok.decode(new[j]) for u in until)
                if all(done):
                    break
        texts = []
        for row, (_, until, _) in zip(new, batch):
            text = self.tok.decode(row)
            for u in until:
                text = text.split(u)[0]
            texts.append(text)
        return texts

    # -- data parallel: what lm-eval's evaluator calls when world_size > 1 --
    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        parts = [torch.zeros_like(tensor) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, tensor)
        return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)

    def gather_object(self, obj, dst: int = 0):
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size if self.rank == dst else None
        torch.distributed.gather_object(obj, out, dst=dst)
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()


# --- entry points -----------------------------------------------------------------------------

def task_manager(tasks: list[str], data_root: str | Path | None = None, metadata: dict | None = None):
    """lm-eval's TaskManager over the local tasks (lm-eval's own tree only when a task needs
    it); ValueError naming the first unknown task, which lm-eval would only log and skip."""
    from lm_eval.tasks import TaskManager

    include = str(task_dir(data_root))
    local = TaskManager(include_path=include, include_defaults=False, metadata=metadata)
    manager = local if all(t in local.all_tasks for t in tasks) else TaskManager(include_path=include, metadata=metadata)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], manager.all_tasks, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"unknown task '{unknown[0]}'{hint}; `python -m huginn_db.lm_eval ls tasks` lists them")
    return manager


def evaluate(checkpoint: str | Path, tasks: list[str], num_steps_list: list[int], limit: int | float | None = None,
             data_root: str | Path | None = None, model_args: dict | None = None, **lm_eval_kwargs) -> dict:
    """{K: lm_eval.simple_evaluate results} for each test-time depth K, loading the model once.

    model_args: HuginnLM options besides checkpoint/num_steps (score, sampler, seed, ...);
    lm_eval_kwargs go to simple_evaluate. Only local tasks requested: lm-eval's own task
    tree is not indexed (seconds saved per call).
    """
    from lm_eval import simple_evaluate

    # as lm-eval's CLI does with model_args: the reasoning tasks read the checkpoint's recipe
    manager = task_manager(tasks, data_root, {"checkpoint": str(checkpoint)})
    lm = HuginnLM(str(checkpoint), **(model_args or {}))
    results = {}
    for K in num_steps_list:
        if K is not None:  # None: the depth the model was built with (the objective's default)
            lm.num_steps = int(K)
        results[K] = simple_evaluate(model=lm, tasks=list(tasks), limit=limit, task_manager=manager, **lm_eval_kwargs)
    return results


def result_caveats(results: dict) -> dict[str, str]:
    """{task: caveat} for the scored tasks whose YAML says why their numbers are not stock
    lm-eval's (metadata.caveat, e.g. wikitext2_local: not comparable to lm-eval's wikitext)."""
    return {t: cfg["metadata"]["caveat"] for t, cfg in sorted(results.get("configs", {}).items())
            if isinstance(cfg.get("metadata"), dict) and cfg["metadata"].get("caveat")}


def main_eval(argv: list[str]) -> int:
    """`huginn-db eval RUN_OR_CKPT [--tasks T,..] [--num-steps 1,2,4] [lm-eval options]`: a depth
    sweep; writes OUT/lm_eval_K{K}.json (default OUT: RUN/eval) and prints lm-eval's tables."""
    import argparse
    import json

    from lm_eval.utils import make_table

    ap = argparse.ArgumentParser(prog="huginn-db eval", description=main_eval.__doc__)
    ap.add_argument("checkpoint", help="run directory or export directory")
    ap.add_argument("--tasks", default=None, help="comma-separated (default: the run's own benchmark, one "
                    "reasoning_<family>_d<k> task per test difficulty of its recipe)")
    ap.add_argument("--num-steps", default=None, help="comma-separated depths (default: the objective's)")
    ap.add_argument("--limit", type=float, default=None)
    ap.add_argument("--num_fewshot", type=int, default=None)
    ap.add_argument("--output_path", default=None)
    ap.add_argument("--log_samples", action="store_true")
    ap.add_argument("--model_args", default="", help="extra HuginnLM options, e.g. score=final,sampler=heun,seed=1")
    ap.add_argument("--data_root", default=None)
    args = ap.parse_args(argv)
    ckpt = Path(args.checkpoint)
    if not (ckpt / "config.yaml").is_file():
        print(f"huginn-db: error: {ckpt} is not a run or export directory (no config.yaml)", file=sys.stderr)
        return 2
    model_args = simple_parse_args_string(args.model_args) if args.model_args else {}
    tasks = args.tasks.split(",") if args.tasks else default_tasks(read_config(ckpt))
    steps = [int(k) for k in args.num_steps.split(",")] if args.num_steps else [None]
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    try:
        results = evaluate(ckpt, tasks, steps, limit=limit, data_root=args.data_root,
                           model_args=model_args, num_fewshot=args.num_fewshot, log_samples=args.log_samples)
    except (KeyError, ValueError) as err:
        print(f"huginn-db: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.output_path) if args.output_path else ckpt / "eval"
    out.mkdir(parents=True, exist_ok=True)
    for K, res in results.items():
        name = f"lm_eval_K{K}.json" if K is not None else "lm_eval.json"
        (out / name).write_text(json.dumps(res, indent=2, default=str))
        print(f"\n== depth {K if K is not None else 'default'} ({out / name})")
        print(make_table(res))
        for task, caveat in result_caveats(res).items():
            print(f"note: {task}: {caveat}")
    return 0


def main(argv: list[str] | None = None) -> None:
    """lm-eval's CLI; `run`/`ls`/`validate` get the local tasks unless --include_path is given."""
    from lm_eval.__main__ import cli_evaluate

    argv = list(sys.argv[1:] if argv is None else argv)
    commands = ("run", "ls", "validate")
    if argv and argv[0] not in commands + ("-h", "--help"):
        argv.insert(0, "run")  # lm-eval's legacy form: no sub-command means run
    if argv and argv[0] in commands and not any(a.split("=")[0] == "--include_path" for a in argv):
        argv += ["--include_path", str(task_dir())]
    sys.argv = [sys.argv[0]] + argv
    cli_evaluate()


if __name__ == "__main__":
    main()
