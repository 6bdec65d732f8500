"""Name -> factory registries: how tasks, models, loss terms, data sources and evaluators meet a
config.

A new model, loss term or data source plugs in by registering itself under a name; configs refer
to it by that name, and no training code changes:

    @MODELS.register("transducer", config=TransducerConfig)
    class Transducer(nnx.Module): ...

    @LOSSES.register("intent_ce")
    def intent_ce(*, label_smoothing: float = 0.0) -> LossTerm: ...
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


@dataclasses.dataclass
class Entry(Generic[T]):
    name: str
    factory: T
    config: type | None  # the typed config dataclass the factory takes, if any
    module: str


class Registry(Generic[T]):
    """A named collection of factories, filled by decorators at import time."""

    def __init__(self, kind: str, providers: tuple[str, ...] = ()):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        # Modules imported lazily the first time a name is looked up, so that registering code
        # never has to be imported by hand before a config names it.
        self._providers = providers
        self._loaded = False

    def register(self, name: str, *, config: type | None = None) -> Callable[[T], T]:
        def deco(factory: T) -> T:
            if name in self._entries and self._entries[name].factory is not factory:
                prev = self._entries[name].module
                raise ValueError(f"{self.kind} {name!r} is already registered (by {prev}); "
                                 "pick another name")
            self._entries[name] = Entry(name, factory, config, getattr(factory, "__module__", "?"))
            return factory
        return deco

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            import importlib
            for mod in self._providers:
                importlib.import_module(mod)

    def get(self, name: str) -> Entry[T]:
        self._load()
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {sorted(self._entries)}. "
                           f"Register it with @{self.kind.upper()}S.register({name!r}) or fix the "
                           "name in the config.")
        return self._entries[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries


# Task families register their tasks, models, loss terms, sources and evaluators when imported.
FAMILIES = ("jaxslu.slu", "jaxslu.nlu", "jaxslu.discovery", "jaxslu.personalization",
            "jaxslu.recommendation", "jaxslu.selflearn", "jaxslu.fairness", "jaxslu.context",
            "jaxslu.directedness", "jaxslu.multiparty")

TASKS: Registry[Any] = Registry("task", providers=FAMILIES)
EVALUATORS: Registry[Any] = Registry("evaluator", providers=FAMILIES)
MODELS: Registry[Any] = Registry("model", providers=("jaxslu.models",) + FAMILIES)
LOSSES: Registry[Any] = Registry("loss", providers=("jaxslu.losses",) + FAMILIES)
DATASETS: Registry[Any] = Registry("dataset", providers=("jaxslu.data",) + FAMILIES)
