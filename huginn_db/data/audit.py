"""Shortcut audit: what the dumbest predictors score on a reasoning family's test problems.

    huginn-db audit RECIPE.yaml [dotted.key=value ...] [--examples N] [--json]

A benchmark says something about depth only if no shallow reading of the prompt solves it.
For every test difficulty this scores a battery of trivial predictors on the test stream and
compares the best of them with chance (uniform guessing among the answers):
  pos+k / pos-k      the symbol k places from the start / the end of the prompt
  majority_answer    the most frequent answer of the training stream
  first_constant     the first symbol of the prompt that is a possible answer
  last_constant      the last one
  bag_majority       the possible answer written most often in the prompt
  last_statement     the value the prompt's last statement computes (families that have one)
  naive_bayes        a bag-of-symbols naive Bayes classifier fitted on the training stream
A difficulty passes when every predictor stays within chance + 5 points. Scores use the first
`examples` problems of the test stream (a superset of the evaluated test set, so the 5-point
margin is not eaten by sampling noise: at 2,000 problems and chance 0.2 one standard error is
0.9 points); fitted predictors learn from as many training-stream problems. `train_overlap` is
the share of those test prompts that also occur in the training sample (memorisation, not
reasoning, could answer them).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import Counter, defaultdict

MARGIN = 0.05  # a predictor may beat chance by at most this much
POSITIONS = 64  # pos+k and pos-k for k < POSITIONS (prompts are shorter in every family)


def _atoms(prompt: str, answers: set[str]) -> list[str]:
    """Units a prediction can copy: single characters when every answer is one character,
    otherwise maximal runs of letters/digits (multi-character answers such as 12)."""
    if all(len(a) == 1 for a in answers):
        return list(prompt)
    return re.findall(r"\w+|\S", prompt)


def _most_common(items: list[str]) -> str | None:
    """The most frequent item, ties going to the first seen (Counter keeps insertion order)."""
    return Counter(items).most_common(1)[0][0] if items else None


class NaiveBayes:
    """Multinomial naive Bayes over the bag of prompt atoms, Laplace-smoothed."""

    def __init__(self, problems: list[tuple[str, str]], answers: set[str]):
        self.answers = answers
        self.prior = Counter(a for _, a in problems)
        self.counts: dict[str, Counter] = defaultdict(Counter)
        for p, a in problems:
            self.counts[a].update(_atoms(p, answers))
        self.vocab = {t for c in self.counts.values() for t in c}
        self.totals = {a: sum(c.values()) for a, c in self.counts.items()}

    def __call__(self, prompt: str) -> str:
        V = len(self.vocab) + 1
        bag = Counter(_atoms(prompt, self.answers))

        def logp(a):
            return math.log(self.prior[a]) + sum(
                n * math.log((self.counts[a][t] + 1) / (self.totals[a] + V)) for t, n in bag.items()
            )

        return max(sorted(self.prior), key=logp)


def predictors(family, train: list[tuple[str, str]], answers: set[str]) -> dict[str, callable]:
    """The battery for one difficulty; `train` fits the two fitted ones."""
    majority = _most_common([a for _, a in train])
    preds = {
        "majority_answer": lambda p: majority,
        "first_constant": lambda p: next((t for t in _atoms(p, answers) if t in answers), None),
        "last_constant": lambda p: next((t for t in reversed(_atoms(p, answers)) if t in answers), None),
        "bag_majority": lambda p: _most_common([t for t in _atoms(p, answers) if t in answers]),
        "naive_bayes": NaiveBayes(train, answers),
    }
    if hasattr(family, "last_statement_value"):
        preds["last_statement"] = family.last_statement_value
    for k in range(POSITIONS):
        preds[f"pos+{k}"] = lambda p, k=k: a[k] if k < len(a := _atoms(p, answers)) else None
        preds[f"pos-{k + 1}"] = lambda p, k=k: a[-k - 1] if k < len(a := _atoms(p, answers)) else None
    return preds


def audit(corpus, examples: int = 2000) -> list[dict]:
    """One row per test difficulty: chance, every predictor's accuracy, the best, pass/fail."""
    family, cfg = corpus.family, corpus.cfg
    rows = []
    for d in cfg.test_difficulties:
        test = family.test_problems(d, examples, cfg.test_seed)
        # the training distribution of this difficulty (jsonl: its train file, if it has d)
        has_train = cfg.family != "jsonl" or d in family.train
        train = corpus.train_problems(len(test), d) if has_train else []
        answers = {a for _, a in train + test}
        scores = {}
        for name, pred in predictors(family, train or test, answers).items():
            if not train and name in ("majority_answer", "naive_bayes"):
                continue  # nothing to fit on without training problems of this difficulty
            scores[name] = sum(pred(p) == a for p, a in test) / len(test)
        best = max(scores, key=scores.get)
        seen = {p for p, _ in train}
        chance = family.chance(d)
        rows.append(
            {
                "difficulty": d,
                "n": len(test),
                "chance": chance,
                "best": best,
                "best_accuracy": scores[best],
                "pass": scores[best] <= chance + MARGIN,
                "train_overlap": sum(p in seen for p, _ in test) / len(test),
                "scores": scores,
            }
        )
    return rows


def format_audit(rows: list[dict], title: str = "") -> str:
    lines = [title] if title else []
    lines += [
        "| difficulty | n | chance | best trivial predictor | its accuracy | margin | train overlap | |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| d{r['difficulty']} | {r['n']} | {r['chance']:.3f} | {r['best']} | {r['best_accuracy']:.3f} | "
            f"{r['best_accuracy'] - r['chance']:+.3f} | {r['train_overlap']:.2f} | "
            f"{'pass' if r['pass'] else 'FAIL'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from huginn_db.config import ConfigError, load_config
    from huginn_db.data.reasoning import ReasoningCorpus

    ap = argparse.ArgumentParser(
        prog="huginn-db audit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("recipe")
    ap.add_argument("--examples", type=int, default=2000, help="test problems scored per difficulty")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args(argv)
    cfg = load_config(args.recipe, args.overrides)
    if cfg.data.name != "reasoning":
        raise ConfigError(f"data.name={cfg.data.name!r}: the audit applies to the reasoning families")
    try:
        corpus = ReasoningCorpus(cfg.data.reasoning, cfg.seed)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    rows = audit(corpus, args.examples)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(
            format_audit(
                rows,
                f"shortcut audit: family {cfg.data.reasoning.family}, {args.examples} test problems per difficulty",
            )
        )
    failed = [r for r in rows if not r["pass"]]
    if failed:
        print(
            f"huginn-db: the family fails the shortcut audit at d{failed[0]['difficulty']}: {failed[0]['best']} "
            f"scores {failed[0]['best_accuracy']:.3f} against chance {failed[0]['chance']:.3f}",
            file=sys.stderr,
        )
        return 1
    return 0
