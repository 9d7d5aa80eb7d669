"""The storage manager: a sandboxed, versioned file space per agent and per group.

* :mod:`aios.storage.paths`: the sandbox (normalisation, spaces, ``may_access``);
* :mod:`aios.storage.base`: the :class:`StorageStore` interface (``aios.storage`` entry
  points), re-exported by :mod:`aios.abc`;
* :mod:`aios.storage.store`: the built-in SQLite store (``sqlite``);
* :mod:`aios.storage.handler`: the family behind the door; :mod:`aios.storage.client`:
  ``ctx.storage``; :mod:`aios.storage.transfer`: export to and import from a directory.

This package's ``__init__`` imports nothing, so that :mod:`aios.abc` can import the
interface without a cycle.
"""
