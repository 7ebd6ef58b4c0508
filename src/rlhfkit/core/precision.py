"""Mixed precision: ``precision: bf16`` runs the forward passes of training in bfloat16 autocast.

What changes and what does not (the AMP recipe, Micikevicius et al. 2018, with bfloat16, which
needs no loss scaling because its exponent range is float32's):

- the weights, their gradients and the optimiser's moments stay float32 (the master copy); the
  matrix products of the forward pass (and, through autograd, of the backward pass) run in
  bfloat16 where ``torch.autocast`` lists them (``linear``, ``matmul``, ``bmm`` ...);
- the output head (the LM head that makes the vocabulary logits, a reward model's score head)
  stays float32 (``keep_head_fp32``): a logit of 20 rounded to bfloat16's 8 significant bits is
  off by up to 0.06, the size of the log-probability differences DPO and PPO's ratios are made
  of; the residual stream of a Llama-style model already stays float32 under autocast (float32
  embeddings plus bfloat16 sub-layer outputs add up in float32);
- what a model is saved as does not change: ``save_pretrained`` writes float32 weights;
- every forward pass a run compares runs at the same precision: in the supervised recipes the
  training, evaluation, reference (DPO / KTO cache) and feature (linear probe) passes
  (``fit`` and ``running_at``); in the online recipes every forward of the policy, the reference
  and the value model (``autocast_forward``: sampling, the behaviour log-probs, the update), so
  PPO's ratio starts at exactly 1 as in float32. Reward models and judges keep float32.

On a CPU with AVX512-BF16 (this project's test machine) a SmolLM2-135M training step is
about 1.5 times as fast (docs/BENCHMARKS.md); on GPUs bfloat16 is the usual way to train. ``fp32`` (the default) is exact
float32 everywhere. The differences bf16 makes are measured in ``docs/BENCHMARKS.md``.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["PRECISIONS", "autocast", "autocast_forward", "keep_head_fp32", "output_heads", "running_at"]

PRECISIONS = ("fp32", "bf16")


def autocast(precision: str, device: torch.device | str = "cpu"):
    """A context in which forward passes run at ``precision`` (``fp32``: nothing changes)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def output_heads(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules that make a model's outputs: the LM head of a causal LM
    (``get_output_embeddings``), the ``score`` / ``classifier`` head of a sequence classifier,
    and rlhfkit's value heads (``v_head``)."""
    heads = []
    get = getattr(model, "get_output_embeddings", None)
    if callable(get):
        try:
            head = get()
        except (AttributeError, NotImplementedError):
            head = None
        if isinstance(head, torch.nn.Module):
            heads.append(head)
    for name in ("score", "classifier", "v_head", "value_head"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Module) and all(head is not h for h in heads):
            heads.append(head)
    return heads


def _wrap_forward(module: torch.nn.Module, make) -> None:
    """Replace ``module``'s forward by ``make(class_forward)`` bound to it: a method on the instance
    (``deepcopy`` copies it bound to the copy; ``inspect.signature`` sees the class forward's
    parameters through ``functools.wraps``, as Hugging Face's ``generate`` reads them). A context
    manager inside the wrapper is left on every way out, an interrupt included (a pair of
    forward hooks is not: PyTorch runs ``always_call`` hooks after an ``Exception`` only)."""
    import functools
    import types

    class_forward = type(module).forward
    module.forward = types.MethodType(functools.wraps(class_forward)(make(class_forward)), module)


def _fp32_head(class_forward):
    def forward(self, *args, **kwargs):
        args = tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
        with torch.autocast(device_type=_device_type(self), enabled=False):
            return class_forward(self, *args, **kwargs)

    return forward


def _bf16_forward(class_forward):
    def forward(self, *args, **kwargs):
        with torch.autocast(device_type=_device_type(self), dtype=torch.bfloat16):
            return class_forward(self, *args, **kwargs)

    return forward


def _device_type(module: torch.nn.Module) -> str:
    p = next(module.parameters(), None)
    return p.device.type if p is not None else "cpu"


def keep_head_fp32(model: torch.nn.Module) -> list[str]:
    """Make ``model``'s output heads compute in float32 inside an autocast region (their input is
    cast to float32 and autocast is off while they run). Idempotent; the parameters and
    ``state_dict`` are untouched. Returns the heads' class names."""
    done = []
    for head in output_heads(model):
        if not getattr(head, "_rlhfkit_fp32", False):
            _wrap_forward(head, _fp32_head)
            head._rlhfkit_fp32 = True
        done.append(type(head).__name__)
    return done


def running_at(model: torch.nn.Module, precision: str):
    """The context for a recipe's forward passes outside ``fit`` (the evaluation before training,
    a reference or feature pass): ``model``'s heads kept float32 and autocast on its device, so
    that every number a run compares is computed the same way."""
    if precision != "fp32":
        keep_head_fp32(model)
    return autocast(precision, next(model.parameters()).device)


def autocast_forward(model: torch.nn.Module, precision: str) -> bool:
    """Make every forward pass of ``model`` run at ``precision`` wherever it is called from
    (generation, the log-prob passes, the update; the backward pass runs outside autocast, as
    AMP recommends), its heads float32. Its backbone (``base_model_prefix``) is wrapped too, for
    callers that run the backbone and the head apart (``models.value.token_values``: PPO's value
    model, REINFORCE's learned baseline). For the online recipes, whose models are called from
    many places; a reward model that was not wrapped keeps its own precision. Apply it to the
    Hugging Face model itself (before a LoRA wrapper). The device is read at each call. Returns
    whether the model was wrapped now."""
    if precision == "fp32" or getattr(model, "_rlhfkit_autocast", None) == precision:
        return False
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    keep_head_fp32(model)
    prefix = getattr(model, "base_model_prefix", "")
    backbone = getattr(model, prefix, None) if prefix else None
    for m in [model] + ([backbone] if isinstance(backbone, torch.nn.Module) and backbone is not model else []):
        if getattr(m, "_rlhfkit_autocast", None) != precision:
            _wrap_forward(m, _bf16_forward)
            m._rlhfkit_autocast = precision
    return True
