"""SS2D selective scan: every backend against the plain reference, values and gradients.

The reference itself is checked on a hand-computed case and against a direct loop over
the pixels in each scan order. The first run on a machine compiles the numba kernels
(tens of seconds; cached afterwards in engine/ops/__pycache__).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from landcover.engine.errors import ConfigError
from landcover.engine.ops import (
    SCAN_BACKEND_ENV,
    SCAN_BACKENDS,
    available_scan_backends,
    cross_merge,
    cross_scan,
    resolve_scan_backend,
    selective_scan_reference,
    ss2d_scan,
    ss2d_scan_macs,
    use_scan_backend,
)
from landcover.engine.ops.scan_reference import ss2d_scan_reference

DIRECTIONS = 4
INPUT_NAMES = ("u", "dt", "A", "B", "C", "D", "dt_bias")
# (batch, H, W, Di): non-square maps, batch 2; for numba (blocks of 64 channels, the last
# one zero-padded) channels within one padded block, exactly one block, and one block plus
# a padded one; and 153 steps: three chunks of its backward pass (64 steps each)
SHAPES = [(1, 5, 7, 6), (2, 4, 9, 40), (1, 8, 8, 64), (1, 3, 17, 70), (1, 9, 17, 8)]
CPU_BACKENDS = [name for name in ("numba", "torch") if name in available_scan_backends()]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def make_inputs(batch, height, width, channels, n_states=16, seed=0, dtype=torch.float64):
    """SS2D inputs in realistic ranges: softplus(dt_bias) log-uniform in [1e-3, 1e-1] (the
    usual dt_proj init), dt spread around 0, A = -(1..N) jittered (the usual A_log init)."""
    gen = torch.Generator().manual_seed(seed)

    def normal(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    step = torch.empty(DIRECTIONS, channels, dtype=dtype)
    step = torch.exp(step.uniform_(math.log(1e-3), math.log(1e-1), generator=gen))
    states = torch.arange(1, n_states + 1, dtype=dtype).expand(DIRECTIONS, channels, n_states)
    return {
        "u": normal(batch, height, width, channels),
        "dt": 0.5 * normal(batch, height, width, DIRECTIONS, channels),
        "A": -states * torch.exp(0.1 * normal(DIRECTIONS, channels, n_states)),
        "B": normal(batch, height, width, DIRECTIONS, n_states),
        "C": normal(batch, height, width, DIRECTIONS, n_states),
        "D": normal(DIRECTIONS, channels),
        "dt_bias": step + torch.log(-torch.expm1(-step)),  # inverse softplus
    }


def run_with_grads(scan, inputs, grad_out, dtype):
    """scan's output and the gradients of <output, grad_out> w.r.t. every input, as fp64."""
    leaves = [inputs[name].to(dtype, copy=True).requires_grad_() for name in INPUT_NAMES]
    out = scan(*leaves)
    out.backward(grad_out.to(dtype))
    grads = {name: leaf.grad.double() for name, leaf in zip(INPUT_NAMES, leaves, strict=True)}
    return out.detach().double(), grads


def assert_close(actual, expected, what, rel=1e-5):
    """Max error relative to the largest expected magnitude (elementwise relative error is
    meaningless for gradients that cancel to near zero)."""
    error = (actual.cpu() - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert error <= rel * scale, f"{what}: max error {error:.3g}, scale {scale:.3g}"


@functools.cache
def reference_results(shape, seed):
    """Inputs, an output gradient, and the reference's output and input gradients in fp64
    (cached: several backends are compared with the same case)."""
    inputs = make_inputs(*shape, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    grad_out = torch.randn(shape, generator=gen, dtype=torch.float64)
    return inputs, grad_out, *run_with_grads(ss2d_scan_reference, inputs, grad_out, torch.float64)


def compare_to_reference(scan, shape, dtype=torch.float32, device="cpu", seed=0):
    inputs, grad_out, expected, expected_grads = reference_results(shape, seed)
    on_device = {name: x.to(device) for name, x in inputs.items()}
    actual, grads = run_with_grads(scan, on_device, grad_out.to(device), dtype)
    assert_close(actual, expected, "output")
    for name in INPUT_NAMES:
        assert_close(grads[name], expected_grads[name], f"gradient of {name}")


# --- the reference -------------------------------------------------------------------


def test_selective_scan_reference_by_hand():
    # decay exp(1 * -ln 2) = 1/2, B = C = 1: h = 1, 1/2 + 2, 5/4 + 3; y = h + D u
    u = torch.tensor([[[1.0, 2.0, 3.0]]])
    delta = torch.full((1, 1, 3), 1.0)
    A = torch.tensor([[-math.log(2.0)]])
    ones = torch.ones(1, 1, 1, 3)
    y = selective_scan_reference(u, delta, A, ones, ones, D=torch.tensor([0.5]))
    torch.testing.assert_close(y, torch.tensor([[[1.5, 3.5, 5.75]]]))
    # softplus(0 + log(e - 1)) = 1: the same numbers through delta_bias and softplus
    y = selective_scan_reference(
        u,
        torch.zeros(1, 1, 3),
        A,
        ones,
        ones,
        D=torch.tensor([0.5]),
        delta_bias=torch.tensor([math.log(math.e - 1)]),
        delta_softplus=True,
    )
    torch.testing.assert_close(y, torch.tensor([[[1.5, 3.5, 5.75]]]))


def test_selective_scan_reference_groups():
    # 2 channels, 2 groups: channel c reads group c's B and C
    u = torch.ones(1, 2, 2)
    delta = torch.ones(1, 2, 2)
    A = torch.full((2, 1), -1e9)  # no memory: h_t = delta * B_t * u_t
    B = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # (1, 2, 1, 2)
    C = torch.tensor([[[[1.0, 1.0]], [[10.0, 10.0]]]])
    y = selective_scan_reference(u, delta, A, B, C)
    torch.testing.assert_close(y, torch.tensor([[[1.0, 2.0], [30.0, 40.0]]]))


def test_cross_scan_orders():
    x = torch.arange(6.0).view(1, 2, 3, 1)  # pixel (h, w) holds 3h + w
    sequences = cross_scan(x)[0, :, 0]
    torch.testing.assert_close(
        sequences,
        torch.tensor(
            [
                [0.0, 1, 2, 3, 4, 5],  # row-major
                [0.0, 3, 1, 4, 2, 5],  # column-major
                [5.0, 4, 3, 2, 1, 0],
                [5.0, 2, 4, 1, 3, 0],
            ]
        ),
    )


def test_cross_scan_merge_round_trip():
    x = torch.randn(2, 3, 5, 7)
    torch.testing.assert_close(cross_merge(cross_scan(x), 3, 5), 4 * x)
    per_direction = torch.randn(2, 3, 5, DIRECTIONS, 7)  # direction k reads map k
    torch.testing.assert_close(cross_merge(cross_scan(per_direction), 3, 5), per_direction.sum(3))


def direct_ss2d(u, dt, A, B, C, D, dt_bias):
    """SS2D straight from the definition: walk each direction's pixel order explicitly."""
    batch, height, width, channels = u.shape
    rows = [(h, w) for h in range(height) for w in range(width)]
    columns = [(h, w) for w in range(width) for h in range(height)]
    out = torch.zeros_like(u)
    for k, order in enumerate([rows, columns, rows[::-1], columns[::-1]]):
        state = torch.zeros(batch, channels, A.shape[-1], dtype=u.dtype)
        for h, w in order:
            delta = torch.nn.functional.softplus(dt[:, h, w, k] + dt_bias[k])  # (batch, Di)
            state = torch.exp(delta[..., None] * A[k]) * state + (
                (delta * u[:, h, w])[..., None] * B[:, h, w, k, None, :]
            )
            out[:, h, w] += (state * C[:, h, w, k, None, :]).sum(-1) + D[k] * u[:, h, w]
    return out


def test_reference_backend_matches_direct_loop():
    inputs = make_inputs(2, 3, 4, 5, n_states=3)
    args = [inputs[name] for name in INPUT_NAMES]
    torch.testing.assert_close(ss2d_scan(*args, backend="reference"), direct_ss2d(*args))


# --- every backend against the reference ---------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backend_matches_reference(backend, shape):
    compare_to_reference(lambda *xs: ss2d_scan(*xs, backend=backend), shape)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_direction_major_dt(backend):
    # dt as a matmul batched over the directions leaves it: (K, b, H, W, Di) in memory
    # (numba reads it in place)
    def scan(u, dt, *rest):
        direction_major = dt.permute(3, 0, 1, 2, 4).contiguous().permute(1, 2, 3, 0, 4)
        return ss2d_scan(u, direction_major, *rest, backend=backend)

    compare_to_reference(scan, (2, 3, 5, 64))


def test_torch_backend_with_multi_step_chunks(monkeypatch):
    # at test sizes every chunk is one step; a small per-step target gives 64 chunks of 3
    # steps (stage 1 and 3 loops, stage 2 carry) and, under autograd, checkpoint segments
    from landcover.engine.ops import scan_torch

    monkeypatch.setitem(scan_torch._STEP_VALUES, "cpu", 1)
    monkeypatch.setattr(scan_torch, "_CHECKPOINT_STEPS", 2)
    compare_to_reference(lambda *xs: ss2d_scan(*xs, backend="torch"), (1, 10, 13, 3))


@pytest.mark.skipif("numba" not in CPU_BACKENDS, reason="numba is not installed")
def test_numba_reads_direction_major_dt_in_place():
    from landcover.engine.ops.scan_numba import _dt_rows

    dt = torch.randn(DIRECTIONS, 2, 3, 5, 64).permute(1, 2, 3, 0, 4)  # (b, H, W, K, Di)
    rows, strides = _dt_rows(dt)
    assert rows.ctypes.data == dt.data_ptr()
    assert strides.tolist() == [15, 1, 30]  # rows per batch item, pixel, direction


@pytest.mark.skipif("numba" not in CPU_BACKENDS, reason="numba is not installed")
def test_numba_inference_path_matches_training_path():
    inputs = make_inputs(1, 6, 5, 70, dtype=torch.float32)
    args = [inputs[name] for name in INPUT_NAMES]
    with torch.no_grad():
        inference = ss2d_scan(*args, backend="numba")
    training = ss2d_scan(*[x.requires_grad_() for x in args], backend="numba")
    assert inference.grad_fn is None and training.grad_fn is not None
    assert torch.equal(inference, training.detach())


@pytest.mark.skipif("numba" not in CPU_BACKENDS, reason="numba is not installed")
def test_numba_keeps_the_input_dtype():
    inputs = make_inputs(1, 4, 3, 8)  # fp64: computed in fp32, returned as fp64
    args = [inputs[name] for name in INPUT_NAMES]
    out = ss2d_scan(*args, backend="numba")
    assert out.dtype == torch.float64
    assert_close(out, ss2d_scan_reference(*args), "output")


@pytest.mark.slow
@pytest.mark.skipif("numba" not in CPU_BACKENDS, reason="numba is not installed")
def test_numba_long_sequence_accuracy():
    # 16384 steps: a biased exp would accumulate along the recurrence; the torch backend in
    # fp64 is the ground truth at this length
    inputs = make_inputs(1, 128, 128, 16)
    args = [inputs[name] for name in INPUT_NAMES]
    with torch.no_grad():
        expected = ss2d_scan(*args, backend="torch")
        actual = ss2d_scan(*[x.float() for x in args], backend="numba")
    assert_close(actual.double(), expected, "output", rel=1e-6)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("shape", SHAPES[:2], ids=lambda s: "x".join(map(str, s)))
def test_torch_backend_on_cuda(shape):
    compare_to_reference(lambda *xs: ss2d_scan(*xs, backend="torch"), shape, device="cuda")


@pytest.mark.cuda
@needs_cuda
@pytest.mark.skipif(
    "mamba_ssm" not in available_scan_backends(), reason="mamba-ssm is not installed"
)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_mamba_ssm_backend(shape):
    compare_to_reference(lambda *xs: ss2d_scan(*xs, backend="mamba_ssm"), shape, device="cuda")


# --- backend selection ---------------------------------------------------------------


@pytest.fixture
def no_env_backend(monkeypatch):
    monkeypatch.delenv(SCAN_BACKEND_ENV, raising=False)


def test_available_backends():
    available = available_scan_backends()
    assert {"reference", "torch"} <= set(available) <= set(SCAN_BACKENDS)


def test_auto_selection(no_env_backend):
    cpu_choice = "numba" if "numba" in available_scan_backends() else "torch"
    cuda_choice = "mamba_ssm" if "mamba_ssm" in available_scan_backends() else "torch"
    assert resolve_scan_backend("cpu") == cpu_choice
    assert resolve_scan_backend("cuda") == cuda_choice
    assert resolve_scan_backend("meta") == "torch"
    assert resolve_scan_backend("cpu", "auto") == cpu_choice


def test_environment_variable_selects_backend(monkeypatch):
    monkeypatch.setenv(SCAN_BACKEND_ENV, "reference")
    assert resolve_scan_backend("cpu") == "reference"
    inputs = make_inputs(1, 3, 4, 5, dtype=torch.float32)
    args = [inputs[name] for name in INPUT_NAMES]
    assert torch.equal(ss2d_scan(*args), ss2d_scan_reference(*args))


def test_context_manager_overrides_environment_and_restores(monkeypatch):
    monkeypatch.setenv(SCAN_BACKEND_ENV, "torch")
    with use_scan_backend("reference"):
        assert resolve_scan_backend("cpu") == "reference"
        with use_scan_backend("torch"):
            assert resolve_scan_backend("cpu") == "torch"
        assert resolve_scan_backend("cpu") == "reference"
        assert resolve_scan_backend("cpu", "torch") == "torch"  # the argument wins
    assert resolve_scan_backend("cpu") == "torch"


def test_context_manager_restores_after_an_error(no_env_backend):
    before = resolve_scan_backend("cpu")
    with pytest.raises(RuntimeError), use_scan_backend("reference"):
        raise RuntimeError
    assert resolve_scan_backend("cpu") == before


def test_unknown_backend_is_a_value_error_listing_the_valid_ones(monkeypatch):
    inputs = make_inputs(1, 2, 2, 3, dtype=torch.float32)
    args = [inputs[name] for name in INPUT_NAMES]
    with pytest.raises(ValueError) as raised:
        ss2d_scan(*args, backend="cuda_fast")
    assert isinstance(raised.value, ConfigError)
    for name in ("auto", *SCAN_BACKENDS):
        assert name in str(raised.value)
    with pytest.raises(ValueError, match="choose one of"), use_scan_backend("fast"):
        pass
    monkeypatch.setenv(SCAN_BACKEND_ENV, "fastest")
    with pytest.raises(ValueError, match="'fastest'"):
        ss2d_scan(*args)


def test_backend_on_the_wrong_device_is_refused(no_env_backend):
    if "numba" in available_scan_backends():
        with pytest.raises(ConfigError, match="cpu tensors"):
            resolve_scan_backend("meta", "numba")
    if "mamba_ssm" in available_scan_backends():
        with pytest.raises(ConfigError, match="cuda tensors"):
            resolve_scan_backend("cpu", "mamba_ssm")
    else:
        with pytest.raises(ConfigError, match="cannot be imported"):
            resolve_scan_backend("cuda", "mamba_ssm")


def test_shape_mismatch_is_a_value_error():
    inputs = make_inputs(1, 3, 4, 5, dtype=torch.float32)
    args = [inputs[name] for name in INPUT_NAMES]
    args[3] = args[3][..., :-1]  # B with N - 1 states
    with pytest.raises(ValueError, match="B must have shape"):
        ss2d_scan(*args)


def test_scan_macs():
    # VMamba's count: 9 MACs per state update, plus the D term
    assert ss2d_scan_macs(2, 3, 5, 4, 7, 16) == 9 * 2 * 15 * 4 * 7 * 16 + 2 * 4 * 7 * 15
    # UNetMamba at 1024x1024: two calls per decoder stage, ~17.0 G of the 117.6 G total
    stages = [(64, 64, 512), (128, 128, 256), (256, 256, 128)]
    total = sum(2 * ss2d_scan_macs(1, h, w, 4, di, 16) for h, w, di in stages)
    assert total == pytest.approx(17.03e9, rel=1e-3)
