"""One-shot search: a weight-sharing supernet over the search space (``oneshot.supernet``)."""

from __future__ import annotations

from oneshot.supernet import Supernet, every_choice, take

__all__ = ["Supernet", "every_choice", "take"]
