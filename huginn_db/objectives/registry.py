"""The table of registered objectives (filled as `huginn_db.objectives` imports its modules)."""

from __future__ import annotations

from huginn_db.objectives.base import Objective

OBJECTIVES: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make an objective available by its `name`."""
    if cls.name in OBJECTIVES and OBJECTIVES[cls.name] is not cls:
        raise ValueError(f"objective {cls.name!r} is registered twice")
    OBJECTIVES[cls.name] = cls
    return cls


def get(name: str) -> type[Objective]:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r} (registered: {', '.join(OBJECTIVES)})")
    return OBJECTIVES[name]


def for_config(cfg) -> type[Objective]:
    """The objective whose config dataclass `cfg` is."""
    for cls in OBJECTIVES.values():
        if isinstance(cfg, cls.config):
            return cls
    raise TypeError(f"no registered objective takes a {type(cfg).__name__}")


def build_objective(name: str, cfg, seed: int = 0) -> Objective:
    return get(name)(cfg, seed=seed)
