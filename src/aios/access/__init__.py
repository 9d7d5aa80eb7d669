"""The access manager: what each agent may use, how much, with whose approval, on record.

* :mod:`aios.access.capabilities`: :class:`Capabilities`, :class:`Quota`,
  :class:`GroupPolicy` (data only; the config imports them);
* :mod:`aios.access.grants`: a process's effective access, and the rule the memory and
  storage managers and the tools handler consult;
* :mod:`aios.access.guard`: :class:`~aios.access.guard.AccessManager`, the guard at the
  door (capabilities, quotas) and the checks of spawn and process control;
* :mod:`aios.access.quota`: quota checks over the kernel's own counters;
* :mod:`aios.access.approval`: approval requests, decisions and approvers;
* :mod:`aios.access.audit`: the append-only audit log in the state database.

This ``__init__`` imports only the data models, so :mod:`aios.config` can import them
without a cycle.
"""

from aios.access.capabilities import Capabilities, GroupPolicy, Quota

__all__ = ["Capabilities", "GroupPolicy", "Quota"]
