"""The scratch memory of CUDA reductions (``sum``, ``mean``): what a CPU trace cannot see.

ATen's CUDA reduction kernel (``aten/src/ATen/native/cuda/Reduce.cuh``) splits a long reduction
across thread blocks when each output has many inputs and there are few outputs, and the blocks
combine their partial results through global memory: after the output, the launch takes a
staging buffer and a semaphore array from the caching allocator and releases both when it
returns. In training this happens in the backward of every broadcast weight: a norm's weight
gradient or a bias gradient sums (batch x sequence) rows. Measured on an H200 (allocator history
of a Qwen2.5-0.5B step, tests/fixtures/gpu-truth): RMSNorm weight gradient, 4096 rows of 896
floats: buffer 29,360,128 B and semaphores 28 B, exactly as :func:`reduction_scratch` computes.

:func:`reduction_scratch` is ``setReduceConfig`` with its defaults (``vt0 = 4``, input vector
size 4, at most 512 threads per block, warps of 32) and the device's multiprocessor count and
threads per multiprocessor, which only change the number of blocks per output when the output
grid is large. A reduction of more than 2**31 elements runs as several launches; it is counted
as one.
"""

from __future__ import annotations

import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SM_COUNT = 132  # multiprocessors of an H100 SXM / H200 (cudaDeviceProp.multiProcessorCount)
THREADS_PER_SM = 2048  # cudaDeviceProp.maxThreadsPerMultiProcessor on sm_80 and sm_90
MAX_THREADS = 512  # threads per reduction block (max_reduce_threads)
WARP = 32
VT0 = INPUT_VEC = 4  # values per thread per load and the input vector width of gpu_reduce_kernel
MIN_VALUES, MAX_VALUES = 16, 256  # values per thread that justify splitting across blocks
SEMAPHORE_BYTES = 4  # one int per output block column


def _last_pow2(n: int) -> int:
    return 1 << (max(int(n), 1).bit_length() - 1)


def _div_up(a: int, b: int) -> int:
    return -(-a // b)


def reduction_scratch(shape, strides, reduce_dims, acc_bytes: int = 4) -> tuple[int, int]:
    """(staging buffer bytes, semaphore bytes) a CUDA ``sum``/``mean`` of a tensor of ``shape`` and
    ``strides`` (elements) over ``reduce_dims`` allocates; (0, 0) when it reduces within blocks."""
    dims = [d for d in range(len(shape)) if shape[d] != 1]
    red = [d for d in dims if d in reduce_dims]
    kept = [d for d in dims if d not in reduce_dims]
    if not red:
        return 0, 0
    num_outputs = math.prod(shape[d] for d in kept)
    inputs = math.prod(shape[d] for d in red)
    red_stride = min(strides[d] for d in red)
    kept_stride = min((strides[d] for d in kept), default=None)
    fastest = kept_stride is None or red_stride < kept_stride
    # TensorIterator coalesces reduced dims that are contiguous with each other into one
    runs = sorted(red, key=lambda d: strides[d])
    n_red_dims = 1 + sum(1 for a, b in zip(runs, runs[1:]) if strides[b] != strides[a] * shape[a])
    dim0, dim1 = (inputs, num_outputs) if fastest else (num_outputs, inputs)
    moving = red_stride if fastest else kept_stride
    out_vec = 1
    if moving == 1:
        if fastest and dim0 > 128 and n_red_dims == 1 and VT0 >= INPUT_VEC:
            dim0 //= INPUT_VEC
        elif not fastest:
            inner = min(kept, key=lambda d: strides[d])
            out_vec = 4  # get_output_vec_size: halved until it divides the output size and the other strides
            while out_vec > 1 and (shape[inner] % out_vec or any(strides[d] % out_vec for d in dims if d != inner)):
                out_vec //= 2
            dim0 //= out_vec
    # set_block_dimension
    max_threads = MAX_THREADS // out_vec
    dim0_p2 = _last_pow2(dim0) if dim0 < max_threads else max_threads
    dim1_p2 = _last_pow2(dim1) if dim1 < max_threads else max_threads
    width = min(dim0_p2, WARP)
    height = min(dim1_p2, max_threads // width)
    width = min(dim0_p2, max_threads // height)
    threads = width * height
    step_in = step_out = 1
    block_x_reduce = fastest
    if fastest:
        step_in *= width
    else:
        step_out *= width
    values = _div_up(inputs, step_in)
    if values >= min(height * MIN_VALUES, MAX_VALUES):  # split across warps
        step_in *= height
        split_warps = True
    else:
        step_out *= height
        split_warps = False
    grid = _div_up(num_outputs // out_vec, step_out)
    values = _div_up(inputs, step_in)
    target = SM_COUNT * (THREADS_PER_SM // threads)
    if not (split_warps and values >= MAX_VALUES and grid <= target):
        return 0, 0
    ctas = max(min(_div_up(target, grid), _div_up(values, MIN_VALUES)), _div_up(values, MAX_VALUES))
    if ctas <= 1:
        return 0, 0
    size = acc_bytes * num_outputs * ctas
    if not block_x_reduce:
        size *= width * out_vec
    return size, SEMAPHORE_BYTES * grid


_SUM_MEAN = {
    torch.ops.aten.sum.dim_IntList,
    torch.ops.aten.sum.default,
    torch.ops.aten.mean.dim,
    torch.ops.aten.mean.default,
}


class CudaReductions(TorchDispatchMode):
    """After each ``sum``/``mean``, allocates and releases the scratch its CUDA kernel would."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        x = args[0] if args else None
        if func in _SUM_MEAN and isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim():
            dims = (
                args[1] if len(args) > 1 and func in (torch.ops.aten.sum.dim_IntList, torch.ops.aten.mean.dim) else None
            )
            dims = range(x.dim()) if not dims else [d % x.dim() for d in dims]
            acc = 8 if x.dtype == torch.float64 else 4
            buffer, semaphores = reduction_scratch(tuple(x.shape), tuple(x.stride()), set(dims), acc)
            if buffer:
                staging = torch.empty(buffer, dtype=torch.uint8, device=x.device)
                flags = torch.empty(semaphores, dtype=torch.uint8, device=x.device)
                del flags, staging
        return out
