"""What every user store keeps and promises, and opening one by URL.

Serving keeps each user's choices as embeddings of the chosen and the rejected response (never
the raw text), shared by every replica and kept across restarts. Every store promises:
- versions come from one store-wide counter, so a user deleted and created again never gets a
  version a replica may still hold a cached z for;
- a user keeps their latest `max_choices` choices;
- a post carrying a request id already seen for that user changes nothing (a client retrying
  after a lost reply); a user's latest `REQUEST_IDS_KEPT` ids are remembered;
- `delete` either removes everything of the user or raises `EraseIncomplete`.

`open_store(url)` picks the backend by the URL's scheme from `USER_STORES`: a plain path (or
`sqlite:///path`) is the embedded SQLite file for one node; `postgresql://…` is a server every
replica on any node shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from npalign.registry import USER_STORES

REQUEST_IDS_KEPT = 1000  # per user: a retry comes soon after its post, and storage stays bounded


@dataclass
class UserState:
    user_id: str
    chosen: np.ndarray  # (choices, dim) float32, oldest first
    rejected: np.ndarray  # (choices, dim)
    updated: float  # unix time of the last change
    version: int  # changes on every change: a cached z is valid while the version is unchanged


class EraseIncomplete(RuntimeError):
    """The user is deleted, but some of their bytes could not be erased yet: delete again."""


class UserStore(Protocol):
    def add_choices(
        self,
        user_id: str,
        chosen: np.ndarray,
        rejected: np.ndarray,
        request_id: str | None = None,
    ) -> UserState: ...

    def get(self, user_id: str) -> UserState | None: ...

    def delete(self, user_id: str) -> bool: ...


def scheme(url: str) -> str:
    """The backend a store URL names: its scheme, or "sqlite" for a plain path."""
    return url.split("://", 1)[0] if "://" in url else "sqlite"


def open_store(url: str, max_choices: int = 256) -> UserStore:
    """The user store at `url` (a path, `sqlite:///path` or `postgresql://…`)."""
    return USER_STORES[scheme(url)](url, max_choices)


def checked_choices(chosen: np.ndarray, rejected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 (choices, dim) arrays of one shape, or a ValueError saying what is wrong."""
    chosen = np.ascontiguousarray(chosen, dtype=np.float32)
    rejected = np.ascontiguousarray(rejected, dtype=np.float32)
    if chosen.ndim != 2 or chosen.shape != rejected.shape or not len(chosen):
        raise ValueError(
            f"choices: chosen {chosen.shape} and rejected {rejected.shape} must be the same "
            "non-empty (choices, dim) shape"
        )
    return chosen, rejected


def stacked(rows: list[bytes], dim: int) -> np.ndarray:
    """Stored float32 rows back as one (rows, dim) array."""
    return np.frombuffer(b"".join(rows), np.float32).reshape(-1, dim)


def check_dimension(user_id: str, stored: int | None, given: int) -> None:
    """A user's choices all have one embedding width (None: a new user)."""
    if stored is not None and stored != given:
        raise ValueError(
            f"user {user_id!r}: stored choices have dimension {stored}, these have {given}"
        )


def existing(store: UserStore, user_id: str) -> UserState:
    """The user's state after a write; KeyError if another request deleted them meanwhile."""
    state = store.get(user_id)
    if state is None:
        raise KeyError(user_id)
    return state
