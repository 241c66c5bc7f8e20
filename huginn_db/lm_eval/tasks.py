"""lm-eval tasks for huginn_db: the local task directory (eval/tasks with absolute data paths,
plus the generated reasoning tasks), a run's own benchmark, `evaluate` at several depths and
`huginn-db eval`."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from lm_eval.utils import simple_parse_args_string

from huginn_db.checkpoint import read_config
from huginn_db.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
TASKS_SRC = REPO / "eval" / "tasks"


# --- local tasks ------------------------------------------------------------------------------


def default_data_root() -> Path:
    return Path(os.environ.get("HUGINN_DB_DATA") or REPO.parent / "shared" / "data").resolve()


REASONING_MAX_DIFFICULTY = 16  # reasoning_<family>_d1 … _d16, where the family can make them
REASONING_GROUP = range(1, 9)  # reasoning_<family>: d1–d8


def reasoning_difficulties(family: str) -> list[int]:
    """Difficulties up to REASONING_MAX_DIFFICULTY that the family's defaults can make (a task
    without a checkpoint uses them); jsonl's are the user's file's, so all of them."""
    from huginn_db.data.families import FAMILIES

    cls = FAMILIES[family]
    every = list(range(1, REASONING_MAX_DIFFICULTY + 1))
    if family == "jsonl":
        return every
    made = cls(cls.config())
    out = []
    for d in every:
        try:
            made.check([d])
        except ValueError:
            break
        out.append(d)
    return out


def reasoning_tasks() -> dict[str, str]:
    """{file name: YAML} of the generated reasoning tasks: one per registered family and
    difficulty its defaults can make, plus a group per generated family (jsonl's difficulties
    are the user's)."""
    from huginn_db.data.families import FAMILIES

    files = {}
    for family in FAMILIES:
        made = reasoning_difficulties(family)
        for d in made:
            files[f"reasoning_{family}_d{d}.yaml"] = (
                f"include: _reasoning_template_yaml\ntask: reasoning_{family}_d{d}\n"
                f"dataset_kwargs:\n  family: {family}\n  difficulty: {d}\n"
            )
        if family != "jsonl":
            members = ", ".join(f"reasoning_{family}_d{d}" for d in REASONING_GROUP if d in made)
            files[f"reasoning_{family}.yaml"] = (
                f"group: reasoning_{family}\ntask: [{members}]\naggregate_metric_list:\n"
                f"  - metric: exact_match\n    aggregation: mean\n    weight_by_size: true\n"
                f"metadata:\n  version: 2.0\n"
            )
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
    sources = sorted(
        p for p in TASKS_SRC.iterdir() if p.is_file() and (p.suffix in (".yaml", ".py") or p.name.endswith("_yaml"))
    )
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
        text = (
            p.read_text(encoding="utf-8")
            .replace("${HUGINN_DB_DATA}", str(root))
            .replace("${LM_EVAL_TASKS}", str(stock))
        )
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
    if cfg.data.name != "reasoning":  # the local perplexity task over the run's own text, if one is
        files = " ".join(cfg.data.text.files)
        for task in ("tinystories_local", "lm1b_local", "wikitext2_local"):
            if any(p in files for p in local_data_paths(task)):
                return [task]
        return ["tinystories_local"]
    r = cfg.data.reasoning
    return [f"reasoning_{r.family}_d{d}" for d in r.test_difficulties]


def task_manager(tasks: list[str], data_root: str | Path | None = None, metadata: dict | None = None):
    """lm-eval's TaskManager over the local tasks (lm-eval's own tree only when a task needs
    it); ValueError naming the first unknown task, which lm-eval would only log and skip."""
    from lm_eval.tasks import TaskManager

    include = str(task_dir(data_root))
    local = TaskManager(include_path=include, include_defaults=False, metadata=metadata)
    manager = (
        local if all(t in local.all_tasks for t in tasks) else TaskManager(include_path=include, metadata=metadata)
    )
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], manager.all_tasks, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"unknown task '{unknown[0]}'{hint}; `python -m huginn_db.lm_eval ls tasks` lists them")
    return manager


def _gather_environment_once() -> None:
    """lm-eval adds torch's environment report to every simple_evaluate result, and gathering
    it runs pip and the compilers (0.8 s a call, once per depth K and per in-training
    evaluation); nothing in it changes inside one process, so it is gathered once."""
    import torch.utils.collect_env as collect_env

    if not hasattr(collect_env.get_pretty_env_info, "cache_info"):
        collect_env.get_pretty_env_info = functools.cache(collect_env.get_pretty_env_info)


def evaluate(
    checkpoint: str | Path,
    tasks: list[str],
    num_steps_list: list[int],
    limit: int | float | None = None,
    data_root: str | Path | None = None,
    model_args: dict | None = None,
    **lm_eval_kwargs,
) -> dict:
    """{K: lm_eval.simple_evaluate results} for each test-time depth K, loading the model once.

    model_args: HuginnLM options besides checkpoint/num_steps (score, sampler, seed, ...);
    lm_eval_kwargs go to simple_evaluate. Only local tasks requested: lm-eval's own task
    tree is not indexed (seconds saved per call).
    """
    from lm_eval import simple_evaluate

    from huginn_db.lm_eval.model import HuginnLM

    # as lm-eval's CLI does with model_args: the reasoning tasks read the checkpoint's recipe
    manager = task_manager(tasks, data_root, {"checkpoint": str(checkpoint)})
    check_data_files(tasks, data_root)  # before any work: every refusal comes first
    check_encodable(tasks, manager, checkpoint)
    lm = HuginnLM(str(checkpoint), **(model_args or {}))
    _gather_environment_once()
    results = {}
    for K in num_steps_list:
        if K is not None:  # None: the depth the model was built with (the objective's default)
            lm.num_steps = int(K)
        results[K] = simple_evaluate(model=lm, tasks=list(tasks), limit=limit, task_manager=manager, **lm_eval_kwargs)
        mean, own = lm.pop_mean_iterations(), {}
        if mean is not None:  # adaptive exit: what the depth cost on average
            own.update(exit=str(lm.exit), max_steps=lm.num_steps, mean_iterations=mean)
        if lm.kv_bytes_per_token is not None:  # generation's decode memory
            own.update(kv_slots=lm.kv_slots, kv_bytes_per_token=lm.kv_bytes_per_token)
            lm.kv_bytes_per_token = None
        if own:
            results[K]["huginn_db"] = own
    return results


def result_caveats(results: dict) -> dict[str, str]:
    """{task: caveat} for the scored tasks whose YAML says why their numbers are not stock
    lm-eval's (metadata.caveat, e.g. wikitext2_local: not comparable to lm-eval's wikitext)."""
    return {
        t: cfg["metadata"]["caveat"]
        for t, cfg in sorted(results.get("configs", {}).items())
        if isinstance(cfg.get("metadata"), dict) and cfg["metadata"].get("caveat")
    }


def main_eval(argv: list[str]) -> int:
    """`huginn-db eval RUN_OR_CKPT [--tasks T,..] [--num-steps 1,2,4] [lm-eval options]`: a depth
    sweep; writes OUT/lm_eval_K{K}.json (default OUT: RUN/eval) and prints lm-eval's tables."""
    import argparse
    import json

    from lm_eval.utils import make_table

    ap = argparse.ArgumentParser(prog="huginn-db eval", description=main_eval.__doc__)
    ap.add_argument("checkpoint", help="run directory or export directory")
    ap.add_argument(
        "--tasks",
        default=None,
        help="comma-separated (default: the run's own benchmark, one "
        "reasoning_<family>_d<k> task per test difficulty of its recipe)",
    )
    ap.add_argument("--num-steps", default=None, help="comma-separated depths (default: the objective's)")
    ap.add_argument("--limit", type=float, default=None)
    ap.add_argument("--num_fewshot", type=int, default=None)
    ap.add_argument("--output_path", default=None)
    ap.add_argument("--log_samples", action="store_true")
    ap.add_argument("--model_args", default="", help="extra HuginnLM options, e.g. score=final,sampler=heun,seed=1")
    ap.add_argument("--data-root", "--data_root", dest="data_root", default=None)
    args = ap.parse_args(argv)
    ckpt = Path(args.checkpoint)
    if not (ckpt / "config.yaml").is_file():
        raise ConfigError(f"{ckpt} is not a run or export directory (no config.yaml)")
    model_args = simple_parse_args_string(args.model_args) if args.model_args else {}
    tasks = args.tasks.split(",") if args.tasks else default_tasks(read_config(ckpt))
    steps = [int(k) for k in args.num_steps.split(",")] if args.num_steps else [None]
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    try:
        results = evaluate(
            ckpt,
            tasks,
            steps,
            limit=limit,
            data_root=args.data_root,
            model_args=model_args,
            num_fewshot=args.num_fewshot,
            log_samples=args.log_samples,
        )
    except (KeyError, ValueError) as err:
        raise ConfigError(str(err).strip("'\"")) from None
    out = Path(args.output_path) if args.output_path else ckpt / "eval"
    out.mkdir(parents=True, exist_ok=True)
    for K, res in results.items():
        name = f"lm_eval_K{K}.json" if K is not None else "lm_eval.json"
        (out / name).write_text(json.dumps(res, indent=2, default=str))
        print(f"\n== depth {K if K is not None else 'default'} ({out / name})")
        print(make_table(res))
        own = res.get("huginn_db", {})
        if "mean_iterations" in own:
            print(
                f"adaptive exit {own['exit']}: {own['mean_iterations']:.2f} iterations per position (max {own['max_steps']})"
            )
        if "kv_bytes_per_token" in own:
            print(
                f"generation's KV cache (kv_slots={own['kv_slots']}): {own['kv_bytes_per_token']:,.0f} bytes per token"
            )
        for task, caveat in result_caveats(res).items():
            print(f"note: {task}: {caveat}")
    return 0


# --- checks before anything is scored --------------------------------------------------------


def local_data_paths(task: str) -> list[str]:
    """The ${HUGINN_DB_DATA}-relative paths a local task's YAML names ([] for other tasks)."""
    import re

    src = TASKS_SRC / f"{task}.yaml"
    if not src.is_file():
        return []
    return re.findall(r"\$\{HUGINN_DB_DATA\}/([^\"'\s]+)", src.read_text(encoding="utf-8"))


def check_data_files(tasks: list[str], data_root: str | Path | None = None) -> None:
    """ConfigError naming the first local task whose data file is missing, the data root used
    and how to point at another one (lm-eval would fail mid-run with a traceback)."""
    root = Path(data_root).resolve() if data_root else default_data_root()
    for task in tasks:
        for rel in local_data_paths(task):
            path = root / rel
            if "." in Path(rel).name and not path.is_file():  # data_files entries (dataset_path is a folder)
                stock = (
                    f"; with network the stock task {task.removesuffix('_local')!r} works"
                    if task.endswith("_local")
                    else ""
                )
                raise ConfigError(
                    f"task {task}: data file {path} not found (data root {root}; set HUGINN_DB_DATA or --data-root){stock}"
                )


def _unencodable(tok, text: str) -> str | None:
    """The first character of `text` the tokenizer cannot encode (None: it encodes all of it)."""
    try:
        tok.encode(text)
        return None
    except ValueError:
        pass
    for ch in dict.fromkeys(text):
        try:
            tok.encode(ch)
        except ValueError:
            return ch
    return text[:20]  # no single character fails: a sequence does


def check_encodable(tasks: list[str], manager, checkpoint: str | Path, sample: int = 25) -> None:
    """ConfigError naming the first task whose inputs (prompts, targets, choices of the first
    `sample` documents) the checkpoint's tokenizer cannot encode, and the first such character."""
    from huginn_db.tokenizer import load_tokenizer

    tok = load_tokenizer(checkpoint)
    import logging

    quiet = logging.getLogger("lm_eval")  # its task-loading notes come again when the tasks run
    level, quiet.level = quiet.level, logging.ERROR
    try:
        loaded = manager.load(list(tasks))["tasks"]  # leaf tasks, groups expanded
    finally:
        quiet.setLevel(level)
    for name, task in loaded.items():
        for i, doc in enumerate(task.eval_docs):
            if i >= sample:
                break
            texts = [task.doc_to_text(doc), task.doc_to_target(doc)]
            if task.OUTPUT_TYPE == "multiple_choice":
                texts += list(task.doc_to_choice(doc))
            for text in texts:
                if isinstance(text, str) and (ch := _unencodable(tok, text)) is not None:
                    raise ConfigError(
                        f"task {task.config.task or name}: the model's tokenizer ({tok.name}, {tok.vocab_size} tokens, "
                        f"of {checkpoint}) cannot encode {ch!r} "
                        f"(in {text[:40]!r}); score it with a model whose tokenizer reads its text"
                    )
