"""Plugin discovery: entry points in five groups, validated, reported by name.

Built-ins are registered by aios's own pyproject.toml exactly as a third-party
distribution registers its plugins. A plugin that fails to import or to validate is
recorded with its error (and reported by ``aios plugins``); the others still load.
Discovery is per registry instance (per kernel): nothing is cached at module level.
"""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aios.errors import ConfigError, PluginError

__all__ = ["GROUPS", "PluginInfo", "PluginRegistry"]

GROUPS: tuple[str, ...] = (
    "aios.handlers",
    "aios.llm_backends",
    "aios.tools",
    "aios.memory",
    "aios.storage",
    "aios.schedulers",
)

_KIND = {
    "aios.handlers": "syscall handler",
    "aios.llm_backends": "LLM backend",
    "aios.tools": "tool",
    "aios.memory": "memory store",
    "aios.storage": "storage store",
    "aios.schedulers": "scheduling policy",
}


@dataclass(frozen=True, slots=True)
class PluginInfo:
    group: str
    name: str
    ref: str
    distribution: str
    version: str
    obj: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _validators() -> dict[str, Callable[[Any], str | None]]:
    # Imported lazily: the interfaces import config/syscalls, which import nothing heavy,
    # but keeping plugins.py import-light lets every module use it.
    from aios.abc import SyscallHandler
    from aios.llm.base import LLMBackend
    from aios.scheduler.policy import SchedulingPolicy

    def subclass_of(base: type) -> Callable[[Any], str | None]:
        def check(obj: Any) -> str | None:
            if isinstance(obj, type) and issubclass(obj, base):
                abstract = getattr(obj, "__abstractmethods__", None)
                if abstract:
                    missing = ", ".join(sorted(abstract))
                    return f"does not implement {missing}"
                return None
            return f"must be a subclass of {base.__module__}.{base.__qualname__}, got {obj!r}"

        return check

    def any_callable(obj: Any) -> str | None:
        return None if callable(obj) else f"must be callable, got {obj!r}"

    return {
        "aios.handlers": subclass_of(SyscallHandler),
        "aios.llm_backends": subclass_of(LLMBackend),
        "aios.schedulers": subclass_of(SchedulingPolicy),
        "aios.tools": any_callable,
        "aios.memory": any_callable,
        "aios.storage": any_callable,
    }


class PluginRegistry:
    """What plugins a kernel knows, per group.

    ``autoload=False`` skips entry-point discovery (tests) except for the syscall
    families of ``aios.handlers``; ``extra`` adds plugins
    directly, ``{group: {name: obj}}``, validated like discovered ones.
    """

    def __init__(
        self,
        *,
        autoload: bool = True,
        extra: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self._plugins: dict[str, dict[str, PluginInfo]] = {g: {} for g in GROUPS}
        validators = _validators()
        for group in GROUPS:
            # The syscall families (llm, tools, memory, storage) are the kernel's own
            # organs: they load even with autoload off, which turns off the rest.
            if autoload or group == "aios.handlers":
                for ep in md.entry_points(group=group):
                    self._add(group, ep, validators[group])
        for group, plugins in (extra or {}).items():
            if group not in self._plugins:
                raise ConfigError(f"unknown plugin group {group!r} (known: {', '.join(GROUPS)})")
            for name, obj in plugins.items():
                err = validators[group](obj)
                self._plugins[group][name] = PluginInfo(
                    group, name, _ref(obj), "<extra>", "", None if err else obj, err
                )

    def _add(self, group: str, ep: md.EntryPoint, validate: Callable[[Any], str | None]) -> None:
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        try:
            obj = ep.load()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a broken plugin is reported, never fatal: even one
            # whose import calls sys.exit() (SystemExit) or raises a BaseException of its own
            info = PluginInfo(group, ep.name, ep.value, dist, version, None,
                              f"failed to import: {type(exc).__name__}: {exc}")
        else:
            err = validate(obj)
            info = PluginInfo(group, ep.name, ep.value, dist, version, None if err else obj, err)
        # A later distribution registering the same name does not silently win.
        if ep.name in self._plugins[group] and self._plugins[group][ep.name].ok and info.ok:
            prev = self._plugins[group][ep.name]
            if prev.ref != info.ref:
                info = PluginInfo(group, ep.name, ep.value, dist, version, None,
                                  f"name clashes with {prev.ref} from {prev.distribution}")
            else:
                return
        self._plugins[group][ep.name] = info

    def get(self, group: str, name: str) -> Any:
        """The plugin object; ConfigError for an unknown name, PluginError for a broken one."""
        plugins = self._plugins[group]
        info = plugins.get(name)
        if info is None:
            known = sorted(n for n, i in plugins.items() if i.ok)
            raise ConfigError(
                f"unknown {_KIND[group]} {name!r} (available: {', '.join(known) or 'none'})"
            )
        if info.error is not None:
            raise PluginError(name, info.error)
        return info.obj

    def names(self, group: str) -> list[str]:
        return sorted(n for n, i in self._plugins[group].items() if i.ok)

    def errors(self, group: str) -> dict[str, str]:
        """The plugins of ``group`` that failed to load, with their errors."""
        return {n: i.error for n, i in self._plugins[group].items() if i.error is not None}

    def report(self) -> list[PluginInfo]:
        return [i for g in GROUPS for i in sorted(self._plugins[g].values(), key=lambda i: i.name)]


def _ref(obj: Any) -> str:
    mod = getattr(obj, "__module__", "?")
    name = getattr(obj, "__qualname__", type(obj).__qualname__)
    return f"{mod}:{name}"
