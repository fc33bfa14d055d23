"""Multiply-accumulate counts of a model's forward pass.

Torch's own counter (:class:`torch.utils.flop_counter.FlopCounterMode`, which counts a
multiply-add as 2 FLOPs) sees matmuls and convolutions. Work it cannot see, or should not
judge by the ops it happens to dispatch, is reported by modules that define
``uncounted_macs(inputs, output) -> int`` (the selective scan: its cost by the VMamba
convention, whichever backend runs it); whatever torch counted inside such a module is
taken out, so the result does not depend on the backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

# CPU's fused attention has no formula in torch's counter; count it as the two matmuls
_EXTRA_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: (
        lambda query, key, value, *args, out_shape=None, **kwargs: sdpa_flop_count(
            query, key, value
        )
    ),
}


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> dict[str, Any]:
    """Count the multiply-adds of ``model(torch.zeros(input_shape))`` in eval mode.

    Returns ``counted_macs`` (torch's FLOP count / 2, without the self-reporting modules),
    ``scan_macs`` (what those modules report), ``total_macs`` (their sum) and ``modules``:
    the counted MACs of each top-level child (self-reported work left out).
    """
    parameter = next(model.parameters())
    x = torch.zeros(tuple(input_shape), dtype=parameter.dtype, device=parameter.device)
    reporters = {
        name: module
        for name, module in model.named_modules()
        if callable(getattr(module, "uncounted_macs", None))
    }
    reported: list[int] = []
    hooks = [
        module.register_forward_hook(
            lambda module, inputs, output: reported.append(module.uncounted_macs(inputs, output))
        )
        for module in reporters.values()
    ]
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, depth=None, custom_mapping=_EXTRA_FORMULAS)
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()

    # FlopCounterMode keys modules by "<RootClass>.<qualified name>"
    flops = {name: sum(counts.values()) for name, counts in counter.get_flop_counts().items()}
    root = type(model).__name__
    reporter_flops = {name: flops.get(f"{root}.{name}", 0) for name in reporters}
    modules = {}
    for child, _ in model.named_children():
        inside = sum(f for name, f in reporter_flops.items() if name.startswith(f"{child}."))
        modules[child] = (flops.get(f"{root}.{child}", 0) - inside) // 2
    counted = (flops.get("Global", 0) - sum(reporter_flops.values())) // 2
    scan = sum(reported)
    return {
        "counted_macs": counted,
        "scan_macs": scan,
        "total_macs": counted + scan,
        "modules": modules,
    }
