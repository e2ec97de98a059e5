"""Evolve (NestEvo): keep drifting device models accurate by re-training them on the edge.

Drift detection decides between distilling the global model into drifted devices and co-evolving
all of them; the profiler and knapsack scheduler order the resulting training tasks on the edge.
"""

from coinfer.sdk.evolve.compression import (
    CompressionStats,
    adaptive_compress,
    needs_full_resolution,
    pool_frames,
)
from coinfer.sdk.evolve.drift import Decision, DriftPolicy, DriftReport, class_drift
from coinfer.sdk.evolve.lcp import life_cycle_performance
from coinfer.sdk.evolve.memory import (
    LayerCost,
    MemoryEstimate,
    MemoryModel,
    calibrate_workspace,
    predict_training_memory,
)
from coinfer.sdk.evolve.scheduler import (
    DpPolicy,
    EvolutionTask,
    Policy,
    RandomPolicy,
    ScheduleResult,
    SerialPolicy,
    TaskOutcome,
    knapsack_select,
    processor_sharing,
    simulate,
)
from coinfer.sdk.evolve.timing import MeasuredRun, TaskFeatures, TrainingTimeModel

__all__ = [
    "CompressionStats",
    "Decision",
    "DpPolicy",
    "DriftPolicy",
    "DriftReport",
    "EvolutionTask",
    "LayerCost",
    "MeasuredRun",
    "MemoryEstimate",
    "MemoryModel",
    "Policy",
    "RandomPolicy",
    "ScheduleResult",
    "SerialPolicy",
    "TaskFeatures",
    "TaskOutcome",
    "TrainingTimeModel",
    "adaptive_compress",
    "calibrate_workspace",
    "class_drift",
    "knapsack_select",
    "life_cycle_performance",
    "needs_full_resolution",
    "pool_frames",
    "predict_training_memory",
    "processor_sharing",
    "simulate",
]
