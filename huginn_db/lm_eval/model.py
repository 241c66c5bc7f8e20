"""The lm-eval model `huginn_db`: a huginn_db run or export directory as a `TemplateLM` (see
the package docstring for its options, scores and randomness)."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import zlib
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window, simple_parse_args_string
from tqdm import tqdm

from huginn_db.checkpoint import load_run
from huginn_db.kv_cache import KVCache
from huginn_db.objectives import Sampling, next_tokens
from huginn_db.objectives.adaptive import ExitRule
from huginn_db.objectives.base import seed_of
from huginn_db.objectives.decoding import PREFILLS
from huginn_db.tokenizer import load_tokenizer

log = logging.getLogger("huginn_db.lm_eval")

DTYPES = {"float32": None, "bfloat16": torch.bfloat16}  # None: no autocast


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

    def __init__(
        self,
        checkpoint: str,
        num_steps: int | None = None,
        sampler: str | None = None,
        seed: int = 0,
        batch_size: int | str = 8,
        dtype: str = "float32",
        device: str | None = None,
        score: str | None = None,
        max_gen_toks: int = 256,
        exit: str | None = None,
        kv_slots: int | str | None = None,
        prefill: str = "parallel",
    ):
        super().__init__()
        cfg, model, objective = load_run(checkpoint)
        self.objective, self.tok = objective, load_tokenizer(checkpoint)
        if self.tok.vocab_size > cfg.model.vocab_size:
            raise ValueError(
                f"{checkpoint}: tokenizer has {self.tok.vocab_size} tokens, the model {cfg.model.vocab_size}"
            )
        kind = type(objective)  # what scoring and samplers this objective's inference offers
        self.score_name = score or kind.scores[0]
        if self.score_name not in kind.scores:
            raise ValueError(f"score must be {'|'.join(kind.scores)} for a {objective.name} model, got {score!r}")
        if kind.samplers:
            self.sampler = sampler or objective.cfg.sampler
            if self.sampler not in kind.samplers:
                raise ValueError(f"sampler must be {'|'.join(kind.samplers)}, got {sampler!r}")
            self._sampler_kw = {"sampler": self.sampler}
        elif sampler is not None:
            raise ValueError(f"sampler= does not apply to a {objective.name} model (it has no ODE sampler)")
        else:
            self.sampler, self._sampler_kw = None, {}
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if str(batch_size).startswith("auto"):
            raise ValueError("batch_size=auto is not supported; give a number")
        self.num_steps = int(num_steps) if num_steps else objective.default_num_steps
        # adaptive exit: num_steps is then the maximum depth; iterations used are counted
        self.exit = ExitRule.parse(exit)
        self.kv_slots = None if kv_slots in (None, "", "none") else int(kv_slots)
        if prefill not in PREFILLS:  # refused before any request is scored
            raise ValueError(f"prefill must be {'|'.join(PREFILLS)}, got {prefill!r}")
        self.prefill = prefill  # tokenwise: a generation prompt enters the cache one position per pass
        self._iterations = [0, 0]  # iterations run, positions scored (adaptive exit)
        self.kv_bytes_per_token: float | None = None  # generation's KV cache, largest seen
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

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        """As lm-eval's, except that model_args win over the CLI's --batch_size/--device (the
        CLI always passes a batch size, which would otherwise clash with batch_size=)."""
        extra = {
            k: v
            for k, v in (additional_config or {}).items()
            if v is not None and k not in arg_dict and k != "max_batch_size"
        }  # max_batch_size: for batch_size=auto only
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
        kw = dict(self._sampler_kw, exit=self.exit) if self.exit is not None and steps > 1 else dict(self._sampler_kw)
        lengths = torch.tensor([len(r) for r in rows])
        with self._autocast():
            if self.kv_slots is None:
                stats = {} if "exit" in kw else None
                logits = self.objective.logits(self.model, ids.to(self._device), steps, noise=noise, stats=stats, **kw)
                if stats:
                    self._count(stats["iterations"].cpu()[torch.arange(T)[None, :] < lengths[:, None]])
            else:  # one position per pass through a cache of kv_slots iterations, as generation runs
                cache, parts = KVCache(self.kv_slots), []
                for t in range(T):
                    stats = {} if "exit" in kw else None
                    x, n = ids[:, t : t + 1].to(self._device), noise[:, t : t + 1]
                    parts.append(self.objective.logits(self.model, x, steps, noise=n, cache=cache, stats=stats, **kw))
                    if stats:
                        self._count(stats["iterations"].cpu()[lengths > t])
                logits = torch.cat(parts, dim=1)
        return F.log_softmax(logits.float(), dim=-1)

    def _count(self, used: torch.Tensor) -> None:
        self._iterations[0] += int(used.sum())
        self._iterations[1] += used.numel()

    def pop_mean_iterations(self) -> float | None:
        """Mean loop iterations per scored (or generated) position since the last call, under
        adaptive exit; None without it."""
        ran, n = self._iterations
        self._iterations = [0, 0]
        return ran / n if self.exit is not None and n else None

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
        pieces = [
            (i, ctx + cont[:a], cont[a : a + L])
            for i, (_, ctx, cont) in enumerate(requests)
            for a in range(0, len(cont), L)
        ]
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
            for ctx, cont in map(
                make_disjoint_window,
                get_rolling_token_windows(
                    token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1
                ),
            ):
                windows.append((None, ctx, cont))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (ll, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm)):
            totals[i] += ll
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        prepared, by_length, repeat = [], defaultdict(list), defaultdict(int)
        for i, req in enumerate(requests):
            context, kwargs = req.args
            kwargs = dict(kwargs)
            until = kwargs.pop("until", None) or []
            until = [u for u in ([until] if isinstance(until, str) else until) if u]
            try:
                sampling = Sampling.from_kwargs(kwargs)
            except ValueError as err:
                raise ValueError(f"generation_kwargs: {err}") from None
            max_gen = min(int(kwargs.get("max_gen_toks", self.max_gen_toks)), self.context_len - 1)
            tokens = self.tok_encode(context)[-(self.context_len - max_gen) :]
            # the n-th identical request (lm-eval's `repeats`) draws its n-th sample
            key = (tuple(tokens), repr(sorted(kwargs.items())))
            repeat[key] += 1
            prepared.append((tokens, until, max_gen, repeat[key] - 1))
            by_length[len(tokens), sampling].append(i)
        out: list[str | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="huginn_db generate_until", disable=disable_tqdm or self.rank != 0)
        for length, sampling in sorted(by_length, key=lambda k: (-k[0], repr(k[1]))):
            group = by_length[length, sampling]
            for start in range(0, len(group), self.batch_size):
                chunk = group[start : start + self.batch_size]
                for i, text in zip(chunk, self._generate([prepared[i] for i in chunk], sampling)):
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(chunk))
        bar.close()
        return out

    @torch.no_grad()
    def _generate(self, batch: list[tuple[list[int], list[str], int, int]], sampling: Sampling) -> list[str]:
        """Continuations of equal-length prompts, each row stopping on its own; a row's sample
        depends on (seed, its prompt, which repeat of the request it is) only."""
        ids = torch.tensor([tokens for tokens, *_ in batch], device=self._device)
        seeds = [self.request_seed(tokens) for tokens, *_ in batch]
        sample_seeds = [seed_of(s, 1, n) for s, (*_, n) in zip(seeds, batch)]
        new: list[list[int]] = [[] for _ in batch]
        done = [max_gen == 0 for _, _, max_gen, _ in batch]
        kw = dict(self._sampler_kw, stats={})
        stats = kw["stats"]
        if self.exit is not None:
            kw["exit"] = self.exit
        steps = next_tokens(
            self.objective,
            self.model,
            ids,
            self.num_steps,
            seeds,
            use_cache=True,
            sampling=sampling,
            sample_seeds=sample_seeds,
            kv_slots=self.kv_slots,
            prefill=self.prefill,
            **kw,
        )
        with self._autocast():
            for nxt in itertools.islice(steps, max(max_gen for _, _, max_gen, _ in batch)):
                for j, t in enumerate(nxt.tolist()):
                    if done[j]:
                        continue
                    if t == self.tok.eos_id:
                        done[j] = True
                        continue
                    new[j].append(t)
                    _, until, max_gen, _ = batch[j]
                    done[j] = len(new[j]) >= max_gen or any(u in self.tok.decode(new[j]) for u in until)
                if all(done):
                    break
        for used in stats.get("history", []):  # the position each pass decoded from
            self._count(used[:, -1].cpu())
        if "kv_bytes_per_token" in stats:
            self.kv_bytes_per_token = max(self.kv_bytes_per_token or 0, stats["kv_bytes_per_token"])
        texts = []
        for row, (_, until, _, _) in zip(new, batch):
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
