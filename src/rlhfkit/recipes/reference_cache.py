"""The reference policy's log-probs, computed once before training and cached on disk.

``cached_reference`` attaches to every example the reference log-probs of its sequences, read
from ``output_dir/reference_logps.pt`` when the file's key (model name and weights, the exact
token ids, the length limit and precision) matches and its log-probs match their sha256, else
computed by the main process and written atomically. DPO's and KTO's ``cached`` reference.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from rlhfkit.recipes.pair_data import pad_scored
from rlhfkit.recipes.sequence_logps import sequence_logps
from rlhfkit.training.checkpoint import load_failure, unwrap
from rlhfkit.training.distributed import DistInfo, barrier
from rlhfkit.training.logging import progress_bar
from rlhfkit.core.precision import running_at

CACHE_FILE = "reference_logps.pt"


def _fingerprint(model) -> bytes:
    """Cheap identity of the weights: name, shape and float64 sum of every tensor."""
    h = hashlib.sha256()
    for name, p in unwrap(model).state_dict().items():
        h.update(f"{name}{tuple(p.shape)}{p.double().sum().item():.12e}".encode())
    return h.digest()


def cache_key(model_spec: str, model, splits: dict[str, list[dict]], max_length: int) -> str:
    """Hash of model name + weights + the exact token ids scored (so data, tokenizer, prompt and
    length limits are all covered)."""
    h = hashlib.sha256()
    h.update(f"{model_spec}|{max_length}".encode())
    h.update(_fingerprint(model))
    for name in sorted(splits):
        h.update(name.encode())
        for e in splits[name]:
            h.update(json.dumps([e["seqs"], e["prompt_len"]]).encode())
    return h.hexdigest()


@torch.no_grad()
def compute_reference(model, examples: list[dict], pad_id: int, micro_batch_size: int, desc: str = "") -> torch.Tensor:
    """``[len(examples), S]`` float64 log-probs of each example's S sequences under ``model``
    (a progress bar when ``desc`` is given: on a CPU this pass over every pair takes minutes)."""
    was_training = model.training
    model.eval()
    n_seqs = len(examples[0]["seqs"]) if examples else 0
    out = torch.zeros(len(examples), n_seqs, dtype=torch.float64)
    step = max(1, micro_batch_size)
    with progress_bar(len(examples), desc=desc, enabled=bool(desc), unit="example") as bar:
        for i in range(0, len(examples), step):
            chunk = examples[i : i + step]
            seqs = [s for e in chunk for s in e["seqs"]]
            lens = [e["prompt_len"] for e in chunk for _ in e["seqs"]]
            b = pad_scored(seqs, lens, pad_id)
            logps = sequence_logps(model, b["input_ids"], b["attention_mask"], b["labels"])[0]
            out[i : i + len(chunk)] = logps.double().cpu().view(len(chunk), n_seqs)
            bar.update(len(chunk))
    model.train(was_training)
    return out


def reference_digest(splits: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the cached log-probs (each split's name, shape and float64 bytes): torch.load
    checks no checksum of tensor data, so a flipped bit would load silently as a wrong reference."""
    h = hashlib.sha256()
    for name in sorted(splits):
        t = splits[name].contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def read_reference_cache(path: Path, key: str) -> tuple[dict | None, str | None]:
    """``(the cache at path when it holds the log-probs for key, what is wrong with the file)``:
    ``(None, None)`` when there is none or it is another data set's or model's (or from before
    caches carried a digest); ``(None, problem)`` when it does not load or its log-probs do not
    match their digest (both are computed again)."""
    if not path.is_file():
        return None, None
    try:
        cache = torch.load(path, weights_only=True)
        if cache.get("key") != key or "sha256" not in cache:
            return None, None
        if cache["sha256"] != reference_digest(cache["splits"]):
            return None, "its log-probs do not match their sha256 (changed after it was written)"
    except Exception as err:  # noqa: BLE001 - a damaged zip or pickle raises any of a dozen types
        return None, f"does not load ({load_failure(err)})"
    return cache, None


def cached_reference(config, model, splits: dict[str, list[dict]], pad_id: int, info: DistInfo) -> str:
    """Attach ``e["ref"]`` (reference log-probs of ``e["seqs"]``) to every example, reading
    ``output_dir/reference_logps.pt`` when its key matches and its log-probs their sha256, else
    computing and writing it (a damaged file with a one-line warning). Returns "reused" or
    "computed". The main process computes; the others wait and read."""
    path = Path(config.output_dir) / CACHE_FILE
    precision = getattr(config, "precision", "fp32")
    # bf16: the reference is computed as the policy's log-probs will be, so that at step 0 they
    # cancel as they do in float32 (and the key tells the two caches apart)
    key = cache_key(config.model + ("" if precision == "fp32" else f"|{precision}"), model, splits, config.max_length)
    status = "reused"
    if info.is_main:
        cache, problem = read_reference_cache(path, key)
        if problem is not None:
            print(
                f"rlhfkit: warning: {path} {problem}; computing the reference log-probs again",
                file=sys.stderr,
                flush=True,
            )
        if cache is None:
            status = "computed"
            with running_at(model, precision):
                logps = {
                    name: compute_reference(
                        model, ex, pad_id, config.micro_batch_size, desc=f"reference log-probs ({name})"
                    )
                    for name, ex in splits.items()
                }
            cache = {"key": key, "splits": logps, "sha256": reference_digest(logps)}
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(cache, tmp)
            os.replace(tmp, path)  # atomic: a kill mid-write never leaves a half cache
    barrier(info)
    if not info.is_main:
        cache = torch.load(path, weights_only=True)
    for name, examples in splits.items():
        for e, row in zip(examples, cache["splits"][name]):
            e["ref"] = row.tolist()
    if info.is_main:
        print(f"reference log-probs: {status} ({path})")
    return status
