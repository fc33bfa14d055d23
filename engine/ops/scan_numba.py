"""Fast CPU SS2D selective scan: numba kernels, forward and backward.

Layout: the inputs are read in place as SS2D makes them, position-major (u (b, L, Di),
dt (b, L, K, Di) or direction-major (K, b, L, Di), B and C (b, L, K, N)). A worker owns
one batch item and a block of ``_BLOCK`` contiguous channels, walks the 4 scan orders by
index arithmetic and adds each direction's output into the merged output in place, so
there is no cross-scan copy and no race. The innermost loops run over the block's
channels (SIMD), the block's states h[N, block] stay in L1, and exp / softplus are
inlined polynomials LLVM can vectorise (numba's math.exp is a scalar libm call here).

Backward: the adjoint recurrence in reverse time. The forward saves the state every
``_CHECKPOINT_INTERVAL`` steps (only when a gradient is needed); the backward recomputes
the states inside one chunk from its checkpoint, then walks it backwards. Memory beyond
the gradients: the checkpoints, (b, K, L / 64, N, Di), a quarter of dt's size.

Per worker the backward pass also holds the states of one chunk, and dB, dC are summed
over the channel blocks afterwards (one partial sum per block). The workers are (batch
item, block of 64 channels) pairs: at batch 1 a 128-channel scan keeps only 2 cores busy.

Speed (see landcover.engine.ops.selective_scan): ~0.5 ns per state update per core
forward, ~2.5 ns forward + backward, on AVX2.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
import torch.nn.functional as F
from llvmlite import binding as llvm
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

_JIT = {"fastmath": True, "error_model": "numpy", "cache": True}
_INLINE = {"inline": "always", "fastmath": True, "error_model": "numpy", "cache": True}

_BLOCK = 64  # channels per worker: 8 AVX2 vectors (measured faster than 32 or 128)
_CHECKPOINT_INTERVAL = 64  # scan steps between states saved for the backward pass
_PREFETCH_AHEAD = 2  # scan steps
_LINE_FLOATS = 16  # floats per 64-byte cache line

# exp(r) = 1 + r + r^2 q(r) on |r| <= ln2/2: q of degree 3, relative-minimax fit. With the
# range reduction below: max error 2.1e-7, mean 1e-9; a bias would accumulate along the
# recurrence. (Degree 4 is 1.2e-7 but a quarter slower: more registers spill.)
_Q = tuple(np.float32(c) for c in (0.49999231, 0.16667114, 0.04189011, 0.00831253))
_LOG2E = np.float32(1.4426950408889634)
_LN2 = np.float32(0.6931471805599453)
_EXP_FLOOR = np.float32(-87.3)  # exp(-87.3) is still a normal float32
_ONE = np.float32(1.0)
_TWO = np.float32(2.0)
_ZERO = np.float32(0.0)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret the low 32 bits of an integer as a float32 (a bitcast: free in SIMD)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        low = builder.trunc(args[0], ir.IntType(32)) if bits.bitwidth > 32 else args[0]
        return builder.bitcast(low, ir.FloatType())

    return types.float32(bits), codegen


@njit(**_INLINE)
def _exp(x):
    """exp(x) to 2.1e-7 relative for -87.3 <= x <= 88 (clamped below, wrong above; all
    callers pass x <= 0): 2^m * exp(r), m = round(x / ln2), |r| <= ln2 / 2."""
    x = max(x, _EXP_FLOOR)
    biased = np.int32(x * _LOG2E + np.float32(127.5))  # m + 127, always > 0
    # m in int32 arithmetic: "x - (biased - 127) ln2" in floats could be reassociated by
    # fastmath into x - biased ln2 + 127 ln2, which loses 5e-6
    r = x - np.float32(np.int32(biased - 127)) * _LN2
    q0, q1, q2, q3 = _Q
    q = ((q3 * r + q2) * r + q1) * r + q0
    return (_ONE + (r + r * r * q)) * _float32_from_bits(biased << 23)


@njit(**_INLINE)
def _softplus(x):
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|), log1p(z) = 2 atanh(z / (2 + z)) by series."""
    z = _exp(min(x, -x))
    s = z / (_TWO + z)  # <= 1/3
    s2 = s * s
    series = np.float32(1 / 11) + s2 * np.float32(1 / 13)
    series = np.float32(1 / 7) + s2 * (np.float32(1 / 9) + s2 * series)
    series = _ONE + s2 * (np.float32(1 / 3) + s2 * (np.float32(1 / 5) + s2 * series))
    return max(x, _ZERO) + _TWO * s * series


@njit(**_INLINE)
def _sigmoid(x):
    z = _exp(min(x, -x))
    return (_ONE if x >= _ZERO else z) / (_ONE + z)


@njit(**_INLINE)
def _position(k, t, height, width):
    """Flat row-major pixel index of step t of scan direction k."""
    if k >= 2:
        t = height * width - 1 - t
    if k % 2 == 1:
        return (t % height) * width + t // height
    return t


# Channel offsets are uint64 (and the block loops run over range(_BLOCK_U)) so numba
# indexes without negative-index wraparound code, which would keep the loops from
# vectorising well. Channels are padded to whole blocks, so every block is full and LLVM
# sees constant trip counts.
_BLOCK_U = np.uint64(_BLOCK)


# the intrinsic's name carries its pointer type, opaque ("p0") since LLVM 15
_PREFETCH_NAME = "llvm.prefetch.p0" if llvm.llvm_version_info >= (15,) else "llvm.prefetch.p0i8"


@intrinsic
def _prefetch(typingctx, array, offset):
    """Hint the CPU to fetch array.flat[offset] into cache (never faults)."""
    if not isinstance(array, types.Array) or not isinstance(offset, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        address = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        prefetch_type = ir.FunctionType(ir.VoidType(), [address.type, i32, i32, i32])
        prefetch = cgutils.get_or_insert_function(builder.module, prefetch_type, _PREFETCH_NAME)
        builder.call(prefetch, [address, i32(0), i32(3), i32(1)])  # read, keep, data cache
        return context.get_dummy_value()

    return types.void(array, offset), codegen


@njit(**_INLINE)
def _prefetch_row(array, row, start, count):
    """Prefetch array viewed as rows of its last dimension: [row, start:start + count]."""
    for offset in range(0, count, _LINE_FLOATS):
        _prefetch(array, row * array.shape[-1] + start + offset)


@njit(**_INLINE)
def _dt_row(inputs, b, p, k):
    """Row of dt_rows holding dt[b, pixel p, direction k, :]."""
    strides = inputs[7]
    return b * strides[0] + p * strides[1] + k * strides[2]


@njit(**_INLINE)
def _prefetch_inputs(inputs, b, p, k, d0):
    """Prefetch what one block reads at pixel p: the column-major walks jump W pixels per
    step, which the hardware prefetcher does not follow across pages."""
    u, dt_rows, _, B, C, _, _, _ = inputs
    pixel = b * u.shape[1] + p
    _prefetch_row(u, pixel, np.int64(d0), _BLOCK)
    _prefetch_row(dt_rows, _dt_row(inputs, b, p, k), np.int64(d0), _BLOCK)
    _prefetch_row(B, pixel * B.shape[2] + k, 0, B.shape[3])
    _prefetch_row(C, pixel * C.shape[2] + k, 0, C.shape[3])


@njit(**_INLINE)
def _state_step(inputs, b, p, k, d0, decay_rates, hist, i_in, i_out, delta, delta_u, y):
    """One step at pixel p of direction k for channels d0:d0+_BLOCK (decay_rates: their A):
    hist[i_out] = exp(delta * A) * hist[i_in] + delta * B * u, y = <C, hist[i_out]>."""
    u, dt_rows, _, B, C, _, dt_bias, _ = inputs
    row = _dt_row(inputs, b, p, k)
    for d in range(_BLOCK_U):
        step = _softplus(dt_rows[row, d0 + d] + dt_bias[k, d0 + d])
        delta[d] = step
        delta_u[d] = step * u[b, p, d0 + d]
        y[d] = _ZERO
    for n in range(decay_rates.shape[0]):
        b_n = B[b, p, k, n]
        c_n = C[b, p, k, n]
        for d in range(_BLOCK_U):
            h = _exp(delta[d] * decay_rates[n, d]) * hist[i_in, n, d] + delta_u[d] * b_n
            hist[i_out, n, d] = h
            y[d] += c_n * h


@njit(**_INLINE)
def _load_decay_rates(A_t, k, d0, decay_rates):
    for n in range(A_t.shape[1]):
        for d in range(_BLOCK_U):
            decay_rates[n, d] = A_t[k, n, d0 + d]


@njit(**_INLINE)
def _forward_direction(inputs, height, width, b, k, d0, scratch, out, states):
    """Scan direction k for one channel block; direction 0 writes out, the others add."""
    u, _, A_t, _, _, _, _, _ = inputs
    decay_rates, hist, delta, delta_u, y, D_sum = scratch
    _load_decay_rates(A_t, k, d0, decay_rates)
    for n in range(A_t.shape[1]):
        for d in range(_BLOCK_U):
            hist[0, n, d] = _ZERO
    length = height * width
    save = states.shape[0] > 0
    for t in range(length):
        if t + _PREFETCH_AHEAD < length:
            ahead = _position(k, t + _PREFETCH_AHEAD, height, width)
            _prefetch_inputs(inputs, b, ahead, k, d0)
            _prefetch_row(out, b * length + ahead, np.int64(d0), _BLOCK)
        if save and t % _CHECKPOINT_INTERVAL == 0:
            chunk = t // _CHECKPOINT_INTERVAL
            for n in range(A_t.shape[1]):
                for d in range(_BLOCK_U):
                    states[b, k, chunk, n, d0 + d] = hist[0, n, d]
        p = _position(k, t, height, width)
        _state_step(inputs, b, p, k, d0, decay_rates, hist, 0, 0, delta, delta_u, y)
        if k == 0:
            for d in range(_BLOCK_U):
                out[b, p, d0 + d] = y[d] + D_sum[d] * u[b, p, d0 + d]
        else:
            for d in range(_BLOCK_U):
                out[b, p, d0 + d] += y[d]


@njit(parallel=True, **_JIT)
def _forward_kernel(inputs, height, width, out, states):
    """out (b, L, Di) = merged scan output; states (b, K, chunks, N, Di) filled unless empty.
    Di is a multiple of _BLOCK."""
    u, _, A_t, _, _, D, _, _ = inputs
    batch, _, channels = u.shape
    directions, n_states, _ = A_t.shape
    n_blocks = channels // _BLOCK
    for item in prange(batch * n_blocks):
        b = item // n_blocks
        d0 = np.uint64((item % n_blocks) * _BLOCK)
        D_sum = np.zeros(_BLOCK, np.float32)
        for k in range(directions):
            for d in range(_BLOCK_U):
                D_sum[d] += D[k, d0 + d]
        scratch = (
            np.empty((n_states, _BLOCK), np.float32),  # decay rates: A of the block
            np.empty((1, n_states, _BLOCK), np.float32),  # h
            np.empty(_BLOCK, np.float32),  # delta
            np.empty(_BLOCK, np.float32),  # delta * u
            np.empty(_BLOCK, np.float32),  # y
            D_sum,
        )
        for k in range(directions):
            _forward_direction(inputs, height, width, b, k, d0, scratch, out, states)


@njit(**_INLINE)
def _backward_direction(inputs, height, width, states, dout, b, k, block, d0, scratch, grads):
    """Gradients of direction k for one channel block, chunk by chunk in reverse time.

    adjoint holds exp(delta_{t+1} A) * dL/dh_{t+1}, the part of dL/dh_t from later steps.
    """
    u, dt_rows, A_t, B, C, D, dt_bias, _ = inputs
    (
        decay_rates,
        grad_rates,
        hist,
        adjoint,
        delta,
        delta_u,
        y,
        gate,
        grad_y,
        grad_delta_u,
        grad_decay,
        grad_D,
        grad_bias,
    ) = scratch
    du, ddt, dA_t, dB, dC, dD, ddt_bias = grads
    n_states = A_t.shape[1]
    length = height * width
    _load_decay_rates(A_t, k, d0, decay_rates)
    for n in range(n_states):
        for d in range(_BLOCK_U):
            adjoint[n, d] = _ZERO
            grad_rates[n, d] = _ZERO
    for d in range(_BLOCK_U):
        grad_D[d] = _ZERO
        grad_bias[d] = _ZERO
    for chunk in range((length - 1) // _CHECKPOINT_INTERVAL, -1, -1):
        t0 = chunk * _CHECKPOINT_INTERVAL
        t1 = min(t0 + _CHECKPOINT_INTERVAL, length)
        for n in range(n_states):
            for d in range(_BLOCK_U):
                hist[0, n, d] = states[b, k, chunk, n, d0 + d]
        for t in range(t0, t1):  # recompute the chunk's states into hist[1:]
            if t + _PREFETCH_AHEAD < t1:
                ahead = _position(k, t + _PREFETCH_AHEAD, height, width)
                pixel = b * length + ahead
                _prefetch_inputs(inputs, b, ahead, k, d0)
                _prefetch_row(dout, pixel, np.int64(d0), _BLOCK)
                _prefetch_row(du, pixel, np.int64(d0), _BLOCK)
                _prefetch_row(ddt, pixel * ddt.shape[2] + k, np.int64(d0), _BLOCK)
                grad_row = (block * dB.shape[1] * length + pixel) * dB.shape[3] + k
                _prefetch_row(dB, grad_row, 0, n_states)
                _prefetch_row(dC, grad_row, 0, n_states)
            p = _position(k, t, height, width)
            _state_step(
                inputs, b, p, k, d0, decay_rates, hist, t - t0, t - t0 + 1, delta, delta_u, y
            )
        for t in range(t1 - 1, t0 - 1, -1):
            p = _position(k, t, height, width)
            i = t - t0
            row = _dt_row(inputs, b, p, k)
            for d in range(_BLOCK_U):
                x = dt_rows[row, d0 + d] + dt_bias[k, d0 + d]
                step = _softplus(x)
                delta[d] = step
                delta_u[d] = step * u[b, p, d0 + d]
                gate[d] = _sigmoid(x)
                grad_y[d] = dout[b, p, d0 + d]
                grad_delta_u[d] = _ZERO
                grad_decay[d] = _ZERO
            for n in range(n_states):
                b_n = B[b, p, k, n]
                c_n = C[b, p, k, n]
                grad_b = _ZERO
                grad_c = _ZERO
                for d in range(_BLOCK_U):
                    rate = decay_rates[n, d]
                    decay = _exp(delta[d] * rate)
                    grad_h = adjoint[n, d] + c_n * grad_y[d]  # dL/dh_t
                    grad_c += grad_y[d] * hist[i + 1, n, d]
                    grad_b += grad_h * delta_u[d]
                    grad_delta_u[d] += grad_h * b_n
                    grad_exponent = grad_h * decay * hist[i, n, d]  # dL/d(delta_t * A)
                    grad_decay[d] += grad_exponent * rate
                    grad_rates[n, d] += grad_exponent * delta[d]
                    adjoint[n, d] = grad_h * decay
                dB[block, b, p, k, n] = grad_b
                dC[block, b, p, k, n] = grad_c
            for d in range(_BLOCK_U):
                u_value = u[b, p, d0 + d]
                grad_dt = (grad_decay[d] + grad_delta_u[d] * u_value) * gate[d]
                ddt[b, p, k, d0 + d] = grad_dt
                grad_bias[d] += grad_dt
                grad_D[d] += grad_y[d] * u_value
                grad_u = grad_delta_u[d] * delta[d] + D[k, d0 + d] * grad_y[d]
                if k == 0:
                    du[b, p, d0 + d] = grad_u
                else:
                    du[b, p, d0 + d] += grad_u
    for n in range(n_states):
        for d in range(_BLOCK_U):
            dA_t[b, k, n, d0 + d] = grad_rates[n, d]
    for d in range(_BLOCK_U):
        dD[b, k, d0 + d] = grad_D[d]
        ddt_bias[b, k, d0 + d] = grad_bias[d]


@njit(parallel=True, **_JIT)
def _backward_kernel(inputs, height, width, states, dout, grads):
    """Writes grads = (du (b, L, Di), ddt (b, L, K, Di), dA_t (b, K, N, Di), dB and dC
    (blocks, b, L, K, N), dD and ddt_bias (b, K, Di)): dA_t, dD, ddt_bias still to be summed
    over the batch, dB and dC over the channel blocks. Di is a multiple of _BLOCK."""
    batch, _, channels = inputs[0].shape
    n_states = inputs[2].shape[1]
    n_blocks = channels // _BLOCK
    for item in prange(batch * n_blocks):
        b = item // n_blocks
        block = item % n_blocks
        d0 = np.uint64(block * _BLOCK)
        scratch = (
            np.empty((n_states, _BLOCK), np.float32),  # decay rates: A of the block
            np.empty((n_states, _BLOCK), np.float32),  # their gradient
            np.empty((_CHECKPOINT_INTERVAL + 1, n_states, _BLOCK), np.float32),  # h of a chunk
            np.empty((n_states, _BLOCK), np.float32),  # adjoint
            np.empty(_BLOCK, np.float32),  # delta
            np.empty(_BLOCK, np.float32),  # delta * u
            np.empty(_BLOCK, np.float32),  # y (unused)
            np.empty(_BLOCK, np.float32),  # sigmoid(dt + dt_bias)
            np.empty(_BLOCK, np.float32),  # dL/dy
            np.empty(_BLOCK, np.float32),  # dL/d(delta * u)
            np.empty(_BLOCK, np.float32),  # dL/d(delta) through the decay
            np.empty(_BLOCK, np.float32),  # dL/dD
            np.empty(_BLOCK, np.float32),  # dL/d(dt_bias)
        )
        for k in range(inputs[2].shape[0]):
            _backward_direction(
                inputs, height, width, states, dout, b, k, block, d0, scratch, grads
            )


def _set_threads() -> None:
    numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


def _as_array(x: torch.Tensor, blocked: bool = False) -> np.ndarray:
    """x as a contiguous fp32 array; blocked: its last (channel) dimension zero-padded to
    whole blocks (the padded channels' results are dropped)."""
    x = x.detach().to(torch.float32)
    if blocked and x.shape[-1] % _BLOCK:
        x = F.pad(x, (0, -x.shape[-1] % _BLOCK))
    return x.contiguous().numpy()


def _dt_rows(dt: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """dt (b, H, W, K, Di) as rows of Di values, and the row strides of batch, pixel and
    direction (an int64 array: numba's parallel loops take no tuples of scalars).

    No copy when memory holds dt densely in any order of (b, (H, W), K) with channels
    innermost: position-major, or direction-major as a matmul batched over the directions
    leaves it; otherwise a position-major copy.
    """
    dt = dt.detach()
    width, channels = dt.shape[2], dt.shape[-1]
    strides = dt.stride()
    span = 1 + sum((size - 1) * stride for size, stride in zip(dt.shape, strides, strict=True))
    usable = (
        dt.dtype == torch.float32
        and channels % _BLOCK == 0
        and strides[-1] == 1
        and all(stride % channels == 0 for stride in strides[:-1])
        and strides[1] == width * strides[2]  # rows and columns merge into pixels
        and span == dt.numel()  # no gaps: the rows cover exactly dt
    )
    if not usable:
        dt = torch.from_numpy(_as_array(dt, blocked=True))
        strides = dt.stride()
    channels = dt.shape[-1]
    rows = dt.as_strided((dt.numel() // channels, channels), (channels, 1))
    batch_stride, _, pixel_stride, direction_stride, _ = (st // channels for st in strides)
    return rows.numpy(), np.array([batch_stride, pixel_stride, direction_stride], np.int64)


def _kernel_inputs(u, dt, A, B, C, D, dt_bias):
    """The kernels' view of the inputs: fp32 arrays, position-major (dt: see _dt_rows), A
    as (K, N, Di), channels padded to whole blocks."""
    batch, height, width, _ = u.shape
    directions, _, n_states = A.shape
    length = height * width
    dt_rows, dt_strides = _dt_rows(dt)
    return (
        _as_array(u, blocked=True).reshape(batch, length, -1),
        dt_rows,
        _as_array(A.transpose(1, 2), blocked=True),
        _as_array(B).reshape(batch, length, directions, n_states),
        _as_array(C).reshape(batch, length, directions, n_states),
        _as_array(D, blocked=True),
        _as_array(dt_bias, blocked=True),
        dt_strides,
    )


def _forward(inputs, height: int, width: int, save_states: bool):
    """The forward kernel on _kernel_inputs: out (b, L, padded Di) and the checkpoints
    (empty unless save_states)."""
    u, _, A_t, _, _, _, _, _ = inputs
    batch, length, channels = u.shape
    directions, n_states, _ = A_t.shape
    chunks = -(-length // _CHECKPOINT_INTERVAL)
    out = np.empty((batch, length, channels), np.float32)
    shape = (batch, directions, chunks, n_states, channels) if save_states else (0,) * 5
    states = np.empty(shape, np.float32)
    _set_threads()
    _forward_kernel(inputs, height, width, out, states)
    return out, states


def _unpadded(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A kernel result without its padding channels, in the given shape."""
    return x[..., : shape[-1]].reshape(shape)


class _SS2DScanNumba(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, dt, A, B, C, D, dt_bias):
        inputs = _kernel_inputs(u, dt, A, B, C, D, dt_bias)
        out, states = _forward(inputs, u.shape[1], u.shape[2], save_states=True)
        ctx.save_for_backward(u, dt, A, B, C, D, dt_bias, torch.from_numpy(states))
        return _unpadded(torch.from_numpy(out), u.shape).to(u.dtype)

    @staticmethod
    def backward(ctx, dout):
        u, dt, A, B, C, D, dt_bias, states = ctx.saved_tensors
        inputs = _kernel_inputs(u, dt, A, B, C, D, dt_bias)
        batch, length, channels = inputs[0].shape
        directions, n_states, _ = inputs[2].shape
        n_blocks = channels // _BLOCK
        grads = (
            np.empty((batch, length, channels), np.float32),  # u
            np.empty((batch, length, directions, channels), np.float32),  # dt
            np.empty((batch, directions, n_states, channels), np.float32),  # A, transposed
            np.empty((n_blocks, batch, length, directions, n_states), np.float32),  # B
            np.empty((n_blocks, batch, length, directions, n_states), np.float32),  # C
            np.empty((batch, directions, channels), np.float32),  # D
            np.empty((batch, directions, channels), np.float32),  # dt_bias
        )
        grad_out = _as_array(dout, blocked=True).reshape(batch, length, channels)
        _set_threads()
        _backward_kernel(inputs, u.shape[1], u.shape[2], states.numpy(), grad_out, grads)
        du, ddt, dA_t, dB, dC, dD, ddt_bias = (torch.from_numpy(g) for g in grads)
        result = (
            _unpadded(du, u.shape),
            _unpadded(ddt, dt.shape),
            _unpadded(dA_t.sum(0), (directions, n_states, A.shape[1])).transpose(1, 2),
            dB.sum(0).view(B.shape),
            dC.sum(0).view(C.shape),
            _unpadded(dD.sum(0), D.shape),
            _unpadded(ddt_bias.sum(0), dt_bias.shape),
        )
        inputs = (u, dt, A, B, C, D, dt_bias)
        return tuple(g.to(x.dtype) for g, x in zip(result, inputs, strict=True))


def ss2d_scan_numba(u, dt, A, B, C, D, dt_bias) -> torch.Tensor:
    """The "numba" SS2D backend (CPU, computes in fp32); shapes as in ``ss2d_scan``."""
    inputs = (u, dt, A, B, C, D, dt_bias)
    if torch.is_grad_enabled() and any(x.requires_grad for x in inputs):
        return _SS2DScanNumba.apply(*inputs)
    out, _ = _forward(_kernel_inputs(*inputs), u.shape[1], u.shape[2], save_states=False)
    return _unpadded(torch.from_numpy(out), u.shape).to(u.dtype)
