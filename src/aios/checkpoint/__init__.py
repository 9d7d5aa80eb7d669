"""Checkpoints of preempted generations: models and their SQLite store."""

from aios.checkpoint.store import Checkpoint, CheckpointStore, ContextSwitch, Restored

__all__ = ["Checkpoint", "CheckpointStore", "ContextSwitch", "Restored"]
