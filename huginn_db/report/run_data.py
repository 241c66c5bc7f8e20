"""What a run directory holds, read back for reports: its config, training records and
lm-eval scores; labels and colours of objectives; the depth benchmark's difficulty × K matrix
and one run's extrapolation gain (defined in `huginn_db.report`)."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

_DEPTH_TASK = re.compile(r"reasoning_([a-z0-9]+)_d(\d+)")
TASKS_SRC = Path(__file__).resolve().parents[2] / "eval" / "tasks"


def short(name: str) -> str:
    """A registered objective's table label; a variant's label is its own."""
    from huginn_db.objectives import OBJECTIVES

    return OBJECTIVES[name].short if name in OBJECTIVES else name


# variants (labels) get colours no registered objective uses, in the order they are first drawn
_VARIANT_COLORS = ("tab:red", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "black")
_variant_color: dict[str, str] = {}


def color(name: str) -> str:
    from huginn_db.objectives import OBJECTIVES

    if name in OBJECTIVES:
        return OBJECTIVES[name].color
    return _variant_color.setdefault(name, _VARIANT_COLORS[len(_variant_color) % len(_VARIANT_COLORS)])


def by_objective(data: list[dict]) -> dict[str, list[dict]]:
    """Runs grouped by objective: registered objectives in registry order, then any others."""
    from huginn_db.objectives import OBJECTIVES

    names = [o for o in OBJECTIVES if any(d["objective"] == o for d in data)]
    names += sorted({d["objective"] for d in data} - set(names))
    return {o: [d for d in data if d["objective"] == o] for o in names}


def runs_with(by_obj: dict, key: str) -> dict[str, list[dict]]:
    """Per objective, the runs whose record `key` (validation, samples, exits) is non-empty;
    objectives without any are left out."""
    kept = {o: [d for d in ds if d[key]] for o, ds in by_obj.items()}
    return {o: ds for o, ds in kept.items() if ds}


def load_run(run: Path) -> dict:
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    where = run / "machine.json"
    ev, final, quality, exits = (
        run / "eval" / f for f in ("lm_eval.json", "final.json", "text_quality.json", "lm_eval_exit.json")
    )
    return {
        "run": run,
        "objective": cfg.get("label") or cfg["objective"]["name"],  # the report's grouping
        "method": cfg["objective"]["name"],
        "seed": cfg["seed"],
        "cfg": cfg,
        "train": [r for r in rows if "loss" in r],
        # in-training evaluations (eval.every) {step, flops, accuracy: {K: {d<k>: acc}}}
        "evals": [r for r in rows if "accuracy" in r],
        "scores": json.loads(ev.read_text())["scores"] if ev.is_file() else {},
        # the trainer's held-out text loss per test-time depth {K: {"loss", "ppl"}} (text runs)
        "validation": json.loads(final.read_text()).get("validation", {}) if final.is_file() else {},
        # samples scored by a judge LM {judge, protocol, scores: {K: metrics}} (huginn_db.textgen)
        "samples": json.loads(quality.read_text()) if quality.is_file() else {},
        # lm-eval under adaptive-exit rules {max_steps, rules: {rule: {mean_iterations, scores}}}
        "exits": json.loads(exits.read_text()) if exits.is_file() else {},
        # where it trained: one record per start (huginn_db.machine)
        "machine": json.loads(where.read_text()) if where.is_file() else [],
    }


def fmt(xs: list[float], spec: str = ".3f") -> str:
    """One value, or mean ± sample standard deviation over seeds."""
    xs = [x for x in xs if x == x]  # drop NaN (a run without that cell)
    if not xs:
        return "–"
    if len(xs) == 1:
        return format(xs[0], spec)
    return f"{format(statistics.mean(xs), spec)} ± {format(statistics.stdev(xs), spec.lstrip('+'))}"


def task_caveats() -> dict[str, str]:
    """{task: metadata.caveat} of the local task YAMLs: why a score is not (quite) stock
    lm-eval's, e.g. wikitext2_local is not comparable to lm-eval's wikitext at all."""
    import yaml

    class Loader(yaml.SafeLoader):  # the YAMLs' !function tags do not matter here
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    out = {}
    for p in sorted(TASKS_SRC.glob("*.yaml")):
        cfg = yaml.load(p.read_text(encoding="utf-8"), Loader=Loader) or {}
        if isinstance(cfg.get("metadata"), dict) and cfg["metadata"].get("caveat"):
            out[cfg["task"]] = cfg["metadata"]["caveat"]
    return out


def headline_metric(task_scores: dict) -> tuple[str, float] | None:
    for m in ("exact_match,none", "acc,none", "acc_norm,none", "word_perplexity,none", "bits_per_byte,none"):
        if m in task_scores:
            return m.split(",")[0], task_scores[m]
    return None


# --- the depth benchmark ------------------------------------------------------------------------


def depth_matrix(run: dict) -> dict[int, dict[int, float]]:
    """{difficulty: {K: exact match}} from a run's reasoning_<family>_d<k> scores."""
    out: dict[int, dict[int, float]] = {}
    for K, tasks in run["scores"].items():
        for task, metrics in tasks.items():
            m = _DEPTH_TASK.fullmatch(task)
            if m and "exact_match,none" in metrics:
                out.setdefault(int(m.group(2)), {})[int(K)] = metrics["exact_match,none"]
    return out


def depth_summary(run: dict) -> dict | None:
    """Extrapolation gain and depth scaling of one run (None without depth scores)."""
    mat = depth_matrix(run)
    if not mat:
        return None
    trained = run["cfg"]["data"]["reasoning"]["train_difficulties"]
    unseen = sorted(d for d in mat if d > max(trained))
    Ks = sorted({K for row in mat.values() for K in row})
    k_lo, k_hi = Ks[0], Ks[-1]
    out = {"k_lo": k_lo, "k_hi": k_hi, "trained_max": max(trained)}
    if max(trained) in mat:
        row = mat[max(trained)]
        out["scaling"] = row.get(k_hi, float("nan")) - row.get(k_lo, float("nan"))
    if unseen:
        row = mat[unseen[0]]
        out.update(unseen=unseen[0], acc_lo=row.get(k_lo, float("nan")), acc_hi=row.get(k_hi, float("nan")))
        out["gain"] = out["acc_hi"] - out["acc_lo"]
    return out


def _corpus(run: dict):
    from huginn_db.config import RunConfig, from_dict
    from huginn_db.data.reasoning import ReasoningCorpus

    cfg = from_dict(RunConfig, run["cfg"])
    return ReasoningCorpus(cfg.data.reasoning, cfg.seed)


def _chance(run: dict) -> float:
    corpus = _corpus(run)
    return statistics.mean(corpus.family.chance(d) for d in corpus.cfg.test_difficulties)
