"""The cost model: peak training memory of a configuration, composed from reduced-depth traces.

    from planner.cost import estimate
    est = estimate(spec, cfg, device="cuda")      # MemoryEstimate
    est.peak_bytes, est.breakdown, est.trainable_layers, est.phase, est.to_dict()

Measured truth (tests, the sampler's checks): ``LiveBytesTracker`` and ``measure_training_peak``.

How (modules in order of the data flow):
- ``roles``: a decoder layer's role in a step (frozen below or above the lowest trainable layer, trainable);
- ``trainable``/``measure``: the training step as the HF Trainer runs it, and its measured peak;
- ``tracker``: a TorchDispatchMode summing live tensor-storage bytes (works under FakeTensorMode);
- ``kernels``/``reductions``: for ``device="cuda"``, attention (SDPA), dropout and split reductions as their
  CUDA kernels allocate;
- ``boundaries``: the hooks that mark where a traced step's segments begin;
- ``trace``/``segments``: one step of the model at 2-3 layers, cut into segments per layer role;
- ``family``: the traces a configuration needs, cached in process and on disk;
- ``cache``: traces and replays on disk, versioned and checksummed;
- ``events``: the same step as allocation/free templates, composed at full depth;
- ``compose``: the segments replayed at full depth; the peak is the running sum's maximum;
- ``allocator``/``replay``: PyTorch's CUDA caching allocator as a model, and a run replayed through it;
- ``device``/``profile``/``profiling``: device profiles, where they are stored, and how ``planner profile``
  measures one;
- ``estimator``: ``estimate()``, the sampler's worst case, device overhead;
- ``plans``: the candidate plans under one budget (``planner estimate --vram``);
- optimizer state and step temporaries, one strategy per optimizer: ``planner.optimizers``.

What is modelled, and how:
- peak = largest live total during the second training step (state exists), use_cache=False;
- dtype: parameters, gradients and AdamW moments in that dtype; ``amp``: fp32 weights and state,
  forward under autocast (traced on CPU: CPU autocast's op lists; GradScaler's in-place
  unscale is not modelled);
- optimizers: AdamW single-tensor loop on CPU (peak temporaries max_i(2·b_i + b_{i-1})), foreach
  on CUDA (sqrt(v) of every trainable tensor at once: Σ b_i); SGD without momentum (no state,
  in-place update); AdamW8bit analytic (see planner.optimizers);
- tied embeddings, LoRA, embeddings/head: see planner.cost.trainable;
- gradient checkpointing: transformers' non-reentrant checkpointing, which makes the embedding
  output require grad, so every layer (frozen ones too) backpropagates and is recomputed;
- ``device="cuda"``: the trace counts what the CUDA kernels keep (fused 16-bit attention, the
  memory-efficient and math kernels, dropout's bool mask: planner.cost.kernels); the step's
  allocations and frees, composed at full depth, run through the caching allocator model twice
  (the first step creates the optimizer state) after the weights, the batch and the cuBLAS
  workspaces: ``allocated_bytes`` and ``reserved_bytes`` are its peaks (max_memory_allocated and
  max_memory_reserved of the second step); peak = reserved + the CUDA context (a DeviceProfile's,
  or planner.cost.device's measured default). Measured on an H200 (tests/fixtures/gpu-truth):
  allocated within 0.02%, reserved within 0.4% on the reference configurations.
"""

from planner.cost.estimator import MemoryEstimate, estimate
from planner.cost.measure import measure_training_peak
from planner.cost.tracker import LiveBytesTracker

__all__ = ["MemoryEstimate", "estimate", "LiveBytesTracker", "measure_training_peak"]
