"""Scheduling: per-resource queues with admission windows, and the policy plugins."""

from aios.scheduler.policy import Entry, HeapPolicy, SchedulingPolicy
from aios.scheduler.queue import ResourceQueue

__all__ = ["Entry", "HeapPolicy", "ResourceQueue", "SchedulingPolicy"]
