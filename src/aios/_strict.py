"""The base of every strict settings model (the kernel config, access capabilities).

Unknown keys are errors and models are frozen. Built in code, a bad value is a
``ConfigError`` naming the key, not a bare pydantic ``ValidationError``: one error tree for
every way of configuring. Only the outermost model converts: nested ones let pydantic
merge their errors, so the key path stays the config's own (``scheduler.policy``, not
``SchedulerConfig``). This module imports nothing of aios at import time.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["DEPTH", "StrictModel"]

DEPTH: ContextVar[int] = ContextVar("aios_config_depth", default=0)
"""How deep the model being built is nested in another (0: outside any)."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, **data: Any) -> None:
        token = DEPTH.set(DEPTH.get() + 1)
        try:
            super().__init__(**data)
        except ValidationError as exc:
            if DEPTH.get() > 1:
                raise
            from aios.config import config_error  # late: the config imports its models

            raise config_error(exc, prefix=type(self).__name__) from None
        finally:
            DEPTH.reset(token)
