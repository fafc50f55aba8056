"""One-shot search: a weight-sharing supernet over the search space (``oneshot.supernet``), its
training and the scoring of subnets with inherited weights (``oneshot.train``)."""

from __future__ import annotations

from oneshot.supernet import Supernet, every_choice, take

__all__ = ["Supernet", "every_choice", "take"]
