"""Name → builder tables, one per family (reward models, policies, preference losses, data
sources, user stores, question selectors).

A family's entries are registered by the module that defines them (`@REWARD_MODELS.register`),
and everything that lists or checks names — config validation, the sweep's `model` field, the
entrypoints' `--help` — asks the registry, so adding a model or a data source is one module and
one entry. A registry knows its home module and imports it on first use: a config can be
validated before anything heavy (torch, Ray) was imported by the caller, and this module imports
nothing of npalign.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, family: str, home: str):
        self.family = family
        self.home = home  # the module that registers the built-in entries
        self._entries: dict[str, T] = {}

    def _load(self) -> dict[str, T]:
        importlib.import_module(self.home)
        return self._entries

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator (or plain call) adding `name` → entry; a name is registered once."""

        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.family} {name!r} is registered already")
            self._entries[name] = entry
            return entry

        return add

    def __getitem__(self, name: str) -> T:
        entries = self._load()
        if name not in entries:
            raise KeyError(self.unknown(name))
        return entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._load()

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._load()))

    def names(self) -> list[str]:
        return list(self._load())

    def unknown(self, name: str) -> str:
        return f"unknown {self.family} {name!r}: registered are {', '.join(self.names())}"

    def check(self, name: str) -> str:
        """`name` if registered, else a ValueError listing what is (for pydantic validators)."""
        if name not in self:
            raise ValueError(self.unknown(name))
        return name


REWARD_MODELS: Registry = Registry("reward model", "npalign.models.reward")
POLICY_MODELS: Registry = Registry("policy", "npalign.models.policy")
PREFERENCE_LOSSES: Registry = Registry("preference loss", "npalign.models.policy")
DATA_SOURCES: Registry = Registry("data source", "npalign.data.sources")
USER_STORES: Registry = Registry("user store", "npalign.stores")  # keyed by URL scheme
QUESTION_SELECTORS: Registry = Registry("question selector", "npalign.active")
