"""The benchmark harness behind ``aios bench``: workloads, systems, metrics, reports."""

from aios.bench.workload import Workload, load_workload

__all__ = ["Workload", "load_workload"]
