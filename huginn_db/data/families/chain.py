"""`chain`: interleaved assignment chains over Z_p, one of them queried at depth d.

    g=3;k=2;q=g+4;a=k-1;x=q-2;t=a+3;u=x+1;?x=   →   0        (d = 2: g → q → x)

Every chain starts at its own root constant; each later statement applies one operation to
a variable defined earlier. The queried variable sits d operations below its root, so the
answer needs d lookups-and-updates in sequence. What keeps shallow readings at chance:
- several chains with distinct random roots, so no single constant is *the* root;
- statements in a random order consistent with definition-before-use: roots are anywhere,
  and the queried statement is never the last one;
- distractors: extra statements derived from random variables of any chain, so every chain
  may branch and a variable may be read more than once;
- with '+'/'-' by a nonzero constant every hop changes the value (p prime: '*' by a nonzero
  constant is a bijection too), so the answer is no constant written in the prompt more
  often than chance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from huginn_db.data.families.base import GeneratedFamily

NAMES = "abcdefghijklmnopqrstuvwxyz"


@dataclass
class ChainConfig:
    """data.reasoning.chain: interleaved assignment chains over Z_p."""

    modulus: int = 5
    """p, a prime below 10: values live in Z_p, one digit each."""
    ops: str = "+-"
    """Operations drawn from "+-*=": +/- by 1..p-1, * by 2..p-1, = copies (the copy-only mode is a shortcut)."""
    chains: int = 2
    """Interleaved chains, each with its own root; the query follows the first."""
    distractors: int = 2
    """Extra statements derived from a random variable of any chain."""

    def __post_init__(self):
        if not _is_prime(self.modulus) or self.modulus > 10:
            raise ValueError(f"modulus must be a prime below 10 (one digit per value), got {self.modulus}")
        if not self.ops or set(self.ops) - set("+-*="):
            raise ValueError(f"ops must be a non-empty subset of '+-*=', got {self.ops!r}")
        if self.ops == "*" and self.modulus == 2:
            raise ValueError("ops='*' needs modulus > 2 (mod 2 has no multiplier besides 1)")
        if self.chains < 1:
            raise ValueError(f"chains must be >= 1, got {self.chains}")
        if self.distractors < 0:
            raise ValueError(f"distractors must be >= 0, got {self.distractors}")


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, int(n**0.5) + 1))


class ChainFamily(GeneratedFamily):
    name = "chain"
    config = ChainConfig

    def check(self, difficulties: list[int]) -> None:
        need = self.cfg.chains * (max(difficulties) + 1) + self.cfg.distractors
        if need > len(NAMES):
            raise ValueError(
                f"data.reasoning.chain: difficulty {max(difficulties)} with {self.cfg.chains} chains and "
                f"{self.cfg.distractors} distractors needs up to {need} variables, more than the "
                f"{len(NAMES)} letters; lower chains, distractors or the difficulty"
            )

    def chance(self, difficulty: int) -> float:
        return 1.0 / self.cfg.modulus

    def alphabet(self) -> str:
        return "0123456789" + NAMES + "=;?+-*"

    def max_length(self, difficulty: int) -> int:
        statements = self.cfg.chains * (difficulty + 1) + self.cfg.distractors
        return 6 * statements + 3 + 1  # "x=y+c;" each, then "?x=", then the answer digit

    def _op(self, rng, value: int) -> tuple[str, int]:
        """One operation on `value`: its text after the source name, and the new value."""
        p, op = self.cfg.modulus, self.cfg.ops[rng.integers(len(self.cfg.ops))]
        if op == "=":
            return "", value
        if op == "*":
            c = int(rng.integers(2, p)) if p > 2 else 1
            return f"*{c}", value * c % p
        c = int(rng.integers(1, p))
        return f"{op}{c}", (value + c if op == "+" else value - c) % p

    def sample(self, rng: np.random.Generator, difficulty: int) -> tuple[str, str]:
        cfg, d = self.cfg, difficulty
        names = iter(rng.permutation(list(NAMES)).tolist())
        # statement: (name, parent name or None, text, value)
        stmts, query = [], None
        for chain in range(cfg.chains):
            length = d if chain == 0 else int(rng.integers(1, max(d, 1) + 1))
            name, value = next(names), int(rng.integers(cfg.modulus))
            stmts.append((name, None, f"{name}={value}", value))
            for _ in range(length):
                parent = stmts[-1]
                text, value = self._op(rng, parent[3])
                name = next(names)
                stmts.append((name, parent[0], f"{name}={parent[0]}{text}", value))
            if chain == 0:
                query = stmts[-1]
        for _ in range(cfg.distractors):
            parent = stmts[int(rng.integers(len(stmts)))]
            text, value = self._op(rng, parent[3])
            name = next(names)
            stmts.append((name, parent[0], f"{name}={parent[0]}{text}", value))
        order = self._order(rng, stmts, query[0])
        return ";".join(s[2] for s in order) + f";?{query[0]}=", str(query[3])

    @staticmethod
    def _order(rng, stmts, query: str) -> list:
        """A uniformly drawn ready-list order (every parent before its children) whose last
        statement is not the queried one, redrawn until so (unless the query is the only
        statement nothing reads, e.g. one chain without distractors: the audit flags that)."""
        children: dict = {}
        for s in stmts:
            children.setdefault(s[1], []).append(s)
        only_leaf = all(s[0] in children or s[0] == query for s in stmts)
        while True:
            ready, order = list(children[None]), []
            while ready:
                s = ready.pop(int(rng.integers(len(ready))))
                order.append(s)
                ready += children.get(s[0], [])
            if order[-1][0] != query or only_leaf:
                return order

    def last_statement_value(self, prompt: str) -> str:
        """The value of the variable the last statement assigns (a recency shortcut)."""
        env: dict[str, int] = {}
        body = prompt.rsplit(";?", 1)[0]
        for stmt in body.split(";"):
            name, expr = stmt.split("=")
            env[name] = evaluate(expr, env, self.cfg.modulus)
        return str(env[name])


def evaluate(expr: str, env: dict[str, int], p: int) -> int:
    """Value of one right-hand side: a constant, a copy `y`, or `y`+c / -c / *c, mod p."""
    if expr.isdigit():
        return int(expr)
    if len(expr) == 1:
        return env[expr]
    x, op, c = env[expr[0]], expr[1], int(expr[2:])
    return (x + c if op == "+" else x - c if op == "-" else x * c) % p
