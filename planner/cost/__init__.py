"""The cost model: peak training memory of a configuration, composed from reduced-depth traces.

    from planner.cost import estimate
    est = estimate(spec, cfg, device="cuda")      # MemoryEstimate
    est.peak_bytes, est.breakdown, est.trainable_layers, est.phase, est.to_dict()

Measured truth (tests, the sampler's checks): ``LiveBytesTracker`` and ``measure_training_peak``.
"""

from planner.cost.estimator import MemoryEstimate, estimate
from planner.cost.measure import measure_training_peak
from planner.cost.tracker import LiveBytesTracker

__all__ = ["MemoryEstimate", "estimate", "LiveBytesTracker", "measure_training_peak"]
