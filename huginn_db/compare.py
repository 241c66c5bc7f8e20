"""Training objectives on the same model and data (default: every registered one, e.g.
DiffusionBlocks and truncated BPTT): train each, evaluate each with lm-eval at several
test-time depths, and write a report of what each cost and what each scored.

    huginn-db compare RECIPE.yaml [--mode step|compute] [--objectives A B ...] [--seeds 0 1]
                      [--num-steps 1,2,4,8] [--tasks T,...] [--limit N] [--out DIR] [--skip-done]
                      [dotted.key=value ...]
    huginn-db report RUN_DIR [RUN_DIR ...] [--out DIR]

An --objectives entry is a registered objective, or a variant of one with its own config keys:
`diffusion_blocks:self_condition=latent,self_condition_prob=0.7` trains objective.name=
diffusion_blocks with objective.diffusion_blocks.self_condition=latent, … (scalar values; its
run directories are db-self_condition-latent-…-seedN and its label in the report
"DB self_condition=latent …").

`step` mode trains every objective for the recipe's train.max_steps. `compute` mode gives each
the same training-FLOP budget: the reference objective's (BPTT's; else the most expensive
one's) expected FLOPs at train.max_steps (or --flops), with each objective's steps = budget /
its analytic FLOPs per step. Without --objectives: every registered objective but the controls.
Each run directory keeps its metrics.jsonl and eval/lm_eval.json, so `report` can rebuild
report.md and the plots from run directories alone. --skip-done keeps a run directory whose
recorded config is the one this command would train and whose lm-eval scores cover the same
tasks, depths and limit (an interrupted study continues where it stopped).

On a text recipe each run also keeps the trainer's held-out loss at every depth, and its
samples are scored as in the DiffusionBlocks paper's Table 5 (huginn_db.textgen: --prompts
held-out prompts × --per-prompt continuations of --new-tokens at every depth, MAUVE, gen-PPL
under a judge LM, entropy). --judge auto (the default) trains one GPT-2 judge for the whole
study in OUT/judge, on the corpus minus every run's held-out documents; --judge NAME_OR_DIR
uses a transformers model instead (gpt2-large on a GPU box), --judge none skips the samples.

--exit kl:1e-4,kl:5e-4,… also scores every run under those adaptive-exit rules with the
largest depth as the maximum (eval/lm_eval_exit.json); the report sets accuracy against the
mean iterations used, next to fixed K: each objective's compute/accuracy frontier.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from huginn_db.checkpoint import read_config
from huginn_db.config import RunConfig, from_dict, load_config, resolve, to_dict
from huginn_db.errors import ConfigError
from huginn_db.objectives import OBJECTIVES
from huginn_db.report import print_report, write_report
from huginn_db.textgen import PROTOCOL


def _train(recipe: str, run: Path, overrides: list[str]) -> None:
    cmd = [sys.executable, "-m", "huginn_db.train", recipe, f"run_dir={run}", "overwrite=true", *overrides]
    print("==", " ".join(cmd[2:]), flush=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    subprocess.run(cmd, check=True, env=env)


def default_objectives() -> list[str]:
    """What `compare` trains without --objectives: every registered objective but the controls."""
    return [name for name, obj in OBJECTIVES.items() if obj.compared_by_default]


@dataclass(frozen=True)
class Variant:
    """One --objectives entry: a registered objective and, for a variant, its own config keys."""

    name: str
    keys: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, spec: str) -> Variant:
        name, _, rest = spec.partition(":")
        if name not in OBJECTIVES:
            raise ConfigError(f"--objectives: unknown objective {name!r} (registered: {', '.join(OBJECTIVES)})")
        keys = []
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise ConfigError(f"--objectives {spec!r}: expected {name}:key=value[,key=value], got {item!r}")
            keys.append((key.strip(), value.strip()))
        return cls(name, tuple(keys))

    @property
    def spec(self) -> str:
        return self.name + (":" + ",".join(f"{k}={v}" for k, v in self.keys) if self.keys else "")

    @property
    def overrides(self) -> list[str]:
        return [f"objective.name={self.name}", *(f"objective.{self.name}.{k}={v}" for k, v in self.keys)]

    @property
    def label(self) -> str:
        """The report's name for it ("": the objective's own)."""
        return " ".join([OBJECTIVES[self.name].short, *(f"{k}={v}" for k, v in self.keys)]) if self.keys else ""

    @property
    def slug(self) -> str:
        return "-".join([OBJECTIVES[self.name].short.lower(), *(f"{k}-{v}" for k, v in self.keys)])


def _variants(objectives) -> list[Variant]:
    return [o if isinstance(o, Variant) else Variant.parse(o) for o in (objectives or default_objectives())]


def steps_for_budget(
    recipe: str, overrides: list[str], budget: float | None, objectives: list | None = None
) -> tuple[dict[str, int], float]:
    """Steps per objective (keyed by its --objectives entry) so that each spends the same
    analytic training FLOPs; the default budget is the reference objective's (BPTT's; else the
    most expensive one's) at train.max_steps."""
    from huginn_db.compute import train_flops
    from huginn_db.data import build_corpus

    per_step = {}
    variants = _variants(objectives)
    base = load_config(recipe, overrides)
    # variants change objective keys only: one corpus gives every one's sequence length
    T = build_corpus(base.data, base.seed, base.model.context).train_seq_len
    B = base.train.micro_batch_size * base.train.grad_accum  # per rank; the ratio is what matters
    for v in variants:
        cfg = load_config(recipe, [*overrides, *v.overrides])
        per_step[v.spec] = train_flops(cfg.model, cfg.objective_config(), B, T)["total"]  # E over r for BPTT
    if budget is None:
        refs = sorted((bool(v.keys), v.spec) for v in variants if OBJECTIVES[v.name].budget_reference)
        reference = per_step[refs[0][1]] if refs else max(per_step.values())
        budget = reference * base.train.max_steps
    return {spec: max(1, round(budget / f)) for spec, f in per_step.items()}, budget


def _essence(cfg: RunConfig) -> dict:
    """What decides a run's result: the config without paths, labels, thread counts, the
    trainer's own evaluation and the other objectives' sections."""
    d = to_dict(cfg)
    for key in ("run_dir", "overwrite", "resume", "label", "eval"):
        d.pop(key)
    d["train"].pop("threads", None)
    d["objective"] = {"name": cfg.objective.name, cfg.objective.name: d["objective"][cfg.objective.name]}
    return d


def is_done(run: Path, recipe: str, overrides: list[str], tasks: list[str], num_steps: list[int], limit) -> bool:
    """True when `run` holds the run these overrides would train, scored on these tasks and depths."""
    import yaml

    ev, recorded = run / "eval" / "lm_eval.json", run / "config.yaml"
    if not (ev.is_file() and recorded.is_file()):
        return False
    try:
        have = from_dict(RunConfig, yaml.safe_load(recorded.read_text()))
        scores = json.loads(ev.read_text())
    except (ConfigError, ValueError, TypeError, yaml.YAMLError):
        return False
    want = resolve(load_config(recipe, overrides), have.model.vocab_size)
    return (
        _essence(have) == _essence(want)
        and scores.get("tasks") == tasks
        and scores.get("limit") == limit
        and set(scores.get("scores", {})) == {str(K) for K in num_steps}
    )


def compare(
    recipe: str,
    mode: str,
    seeds: list[int],
    num_steps: list[int],
    tasks: list[str] | None,
    limit: int | None,
    out: Path,
    overrides: list[str],
    budget: float | None = None,
    objectives: list | None = None,
    skip_done: bool = False,
    judge: str = "auto",
    judge_steps: int = 1000,
    protocol: dict | None = None,
    sample_steps: list[int] | None = None,
    exits: list[str] | None = None,
) -> Path:
    base = load_config(recipe, overrides)
    variants = _variants(objectives)
    from huginn_db.objectives.adaptive import ExitRule

    try:
        exits = [str(ExitRule.parse(e)) for e in exits or []]
    except ValueError as err:
        raise ConfigError(f"--exit: {err}") from None
    for v in variants:  # a bad variant key fails here, before any training
        load_config(recipe, [*overrides, *v.overrides])
    from huginn_db.lm_eval import default_tasks, task_manager

    tasks = tasks or default_tasks(base)
    try:  # an unknown task fails here, not after the first training run
        task_manager(tasks)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    steps = {v.spec: base.train.max_steps for v in variants}
    if mode == "compute":
        steps, budget = steps_for_budget(recipe, overrides, budget, variants)
        print(f"compute-matched budget {budget:.3e} FLOPs: steps {steps}", flush=True)
    runs = []
    for seed in seeds:
        for v in variants:
            run = out / f"{v.slug}-seed{seed}"
            # lm-eval scores the runs below; of the trainer's own end-of-run scores only the
            # held-out text loss per depth is kept (lm-eval's text tasks score DB at σ_max only)
            own = f"[{','.join(map(str, num_steps))}]" if base.data.name == "text" else "[]"
            args = [
                *overrides,
                *v.overrides,
                f"label={v.label}",
                f"seed={seed}",
                f"train.max_steps={steps[v.spec]}",
                f"eval.num_steps={own}",
            ]
            if skip_done and is_done(run, recipe, args, tasks, num_steps, limit):
                print(f"== {run}: done (same config and scores), kept", flush=True)
            else:
                _train(recipe, run, args)
                evaluate_run(run, tasks, num_steps, limit, seed)
            if exits:  # the compute/accuracy frontier: adaptive exit up to the largest depth
                evaluate_exits(run, tasks, exits, max(num_steps), limit, seed)
            runs.append(run)
    if base.data.name == "text" and judge != "none":
        score_text(runs, out, base, judge, judge_steps, sample_steps or num_steps, protocol or {})
    return write_report(runs, out)


def score_text(runs: list[Path], out: Path, base, judge: str, judge_steps: int, num_steps: list[int], protocol: dict):
    """Samples of every run at every depth from its held-out prompts, scored by one judge LM
    (the DiffusionBlocks paper's Table 5). `judge=auto` trains the study's judge in OUT/judge,
    without any run's held-out documents, once."""
    from huginn_db.judge import Judge, ensure_judge, held_out_documents
    from huginn_db.textgen import is_scored, score_samples

    if judge == "auto":
        exclude = set().union(*(held_out_documents(str(r)) for r in runs))
        text = base.data.text
        judge = str(ensure_judge(out / "judge", text.files, exclude, judge_steps, text.data_root))
    loaded = None
    for run in runs:
        own = {**protocol, "seed": int(read_config(run).seed)}  # each seed samples on its own stream
        if is_scored(run, judge, num_steps, {**PROTOCOL, **own}):
            print(f"== {run}: samples scored by {judge} (same protocol), kept", flush=True)
            continue
        loaded = loaded or Judge(judge)
        score_samples(run, loaded, num_steps, own)


def _numbers(res: dict) -> dict:
    return {
        t: {m: v for m, v in r.items() if isinstance(v, (int, float)) and not m.endswith("_stderr,none")}
        for t, r in res["results"].items()
    }


def evaluate_run(run: Path, tasks: list[str], num_steps: list[int], limit: int | None, seed: int) -> dict:
    """lm-eval at each depth; eval/lm_eval.json holds {K: {task: {metric: value}}}."""
    from huginn_db.lm_eval import evaluate

    results = evaluate(str(run), tasks, num_steps, limit=limit, model_args={"seed": seed})
    scores = {str(K): _numbers(res) for K, res in results.items()}
    (run / "eval").mkdir(exist_ok=True)
    (run / "eval" / "lm_eval.json").write_text(json.dumps({"tasks": tasks, "limit": limit, "scores": scores}, indent=2))
    return scores


def evaluate_exits(run: Path, tasks: list[str], rules: list[str], depth: int, limit: int | None, seed: int) -> dict:
    """lm-eval under each adaptive-exit rule with `depth` as the maximum; eval/lm_eval_exit.json
    holds {rule: {mean_iterations, scores: {task: {metric: value}}}} (kept when already there)."""
    from huginn_db.lm_eval import evaluate

    path = run / "eval" / "lm_eval_exit.json"
    want = {"tasks": tasks, "limit": limit, "max_steps": depth}
    try:
        have = json.loads(path.read_text())
    except (OSError, ValueError):
        have = {}
    if {k: have.get(k) for k in want} != want:
        have = {**want, "rules": {}}
    for rule in rules:
        if rule in have["rules"]:
            continue
        res = evaluate(str(run), tasks, [depth], limit=limit, model_args={"seed": seed, "exit": rule})[depth]
        have["rules"][rule] = {"mean_iterations": res["huginn_db"]["mean_iterations"], "scores": _numbers(res)}
        path.write_text(json.dumps(have, indent=2))
    return have


def main_compare(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="huginn-db compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("recipe")
    ap.add_argument("--mode", choices=["step", "compute"], default="step")
    ap.add_argument("--flops", type=float, default=None, help="compute mode: FLOP budget per variant")
    ap.add_argument(
        "--objectives",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"objectives or NAME:key=value,… variants to train (default: {' '.join(default_objectives())}; "
        f"registered: {' '.join(OBJECTIVES)})",
    )
    ap.add_argument("--skip-done", action="store_true", help="keep runs already trained and scored as asked")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--num-steps", default="1,2,4,8,16", help="test-time depths for evaluation")
    ap.add_argument("--tasks", default=None, help="comma-separated lm-eval tasks (default: by data)")
    ap.add_argument("--limit", type=int, default=None, help="lm-eval --limit per task")
    ap.add_argument("--out", default=None, help="default: the recipe's run_dir parent + /compare")
    ap.add_argument(
        "--judge",
        default="auto",
        help="text recipes: judge LM for samples (hub name or directory; auto: train one in OUT/judge; none: skip)",
    )
    ap.add_argument("--judge-steps", type=int, default=1000, help="training steps of the auto judge")
    ap.add_argument("--sample-steps", default=None, help="text recipes: depths to sample at (default: --num-steps)")
    ap.add_argument(
        "--exit",
        default=None,
        help="adaptive-exit rules to score up to the largest --num-steps, comma-separated (e.g. kl:1e-4,kl:5e-4,entropy:0.1)",
    )
    ap.add_argument("--prompts", type=int, default=PROTOCOL["prompts"], help="held-out prompts per run and depth")
    ap.add_argument("--per-prompt", type=int, default=PROTOCOL["per_prompt"], help="samples per prompt")
    ap.add_argument("--prompt-tokens", type=int, default=PROTOCOL["prompt_tokens"])
    ap.add_argument("--new-tokens", type=int, default=PROTOCOL["new_tokens"])
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args(argv)
    if args.objectives:  # nargs="+" also takes the dotted overrides that follow it: give them back
        keys = [o for o in args.objectives if "=" in o and ":" not in o]
        args.objectives = [o for o in args.objectives if o not in keys] or None
        args.overrides = [*args.overrides, *keys]
    base = load_config(args.recipe, args.overrides)
    out = Path(args.out) if args.out else Path(base.run_dir).parent
    try:
        report = compare(
            args.recipe,
            args.mode,
            args.seeds,
            [int(k) for k in args.num_steps.split(",")],
            args.tasks.split(",") if args.tasks else None,
            args.limit,
            out,
            args.overrides,
            args.flops,
            args.objectives,
            args.skip_done,
            args.judge,
            args.judge_steps,
            {k: getattr(args, k) for k in ("prompts", "per_prompt", "prompt_tokens", "new_tokens")},
            [int(k) for k in args.sample_steps.split(",")] if args.sample_steps else None,
            args.exit.split(",") if args.exit else None,
        )
    except subprocess.CalledProcessError as err:  # the run printed its own error; pass its exit code on
        print(f"huginn-db: error: a training run failed (exit {err.returncode})", file=sys.stderr)
        return err.returncode or 1
    print_report(report)
    print(f"report: {report}")
    return 0


def main_report(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="huginn-db report", description="Rebuild report.md and plots from run dirs.")
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", default=None, help="default: the first run's parent directory")
    args = ap.parse_args(argv)
    missing = [r for r in args.runs if not (Path(r) / "metrics.jsonl").is_file()]
    if missing:
        raise ConfigError(f"not a run directory (no metrics.jsonl): {missing[0]}")
    report = write_report([Path(r) for r in args.runs], Path(args.out) if args.out else Path(args.runs[0]).parent)
    print_report(report)
    print(f"report: {report}")
    return 0
