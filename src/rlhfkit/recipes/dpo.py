"""Direct preference optimisation: DPO, IPO, conservative DPO, SimPO and ORPO on preference pairs.

    rlhfkit dpo --data hh-rlhf --model smollm2-135m --loss sigmoid --beta 0.1 --output_dir outputs/dpo

Reads pairs (a JSONL/JSON file of prompt/chosen/rejected, or hh-rlhf / finegrained / oasst),
holds out a fixed-seed split by prompt, and trains with the shared loop (exact resume, metrics, progress).
Chosen and rejected go through the policy in one forward pass; a sequence's log-prob is the sum
over its response tokens (prompt and padding masked out).

The reference policy, for the losses that have one (sigmoid, ipo, cdpo):
- ``cached`` (default): the reference model's log-probs of every training and held-out response are
  computed once before training and stored in ``output_dir/reference_logps.pt`` under a hash of the
  token ids, the model name and its weights, with a sha256 of the log-probs; a rerun or a resumed
  run reuses them (a damaged file is computed again, with a warning), and no second model is kept
  in memory nor run at each step;
- ``lora``: the policy with its LoRA adapter disabled (needs ``--lora.r``), run at each step;
- ``none``: no reference (simpo, orpo).

Ties (``tie`` true in a pair file, or FineGrainedRLHF's equal ratings): ``--ties drop`` removes
them; ``--ties keep`` trains them towards *equal* implicit rewards (logistic losses with label
1/2, IPO with target margin 0; see core/losses/preference.py). Either way they are counted.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhfkit.core.logprobs import token_logprobs
from rlhfkit.core.losses import (
    PREFERENCE_LOSSES,
    REFERENCE_FREE_LOSSES,
    cdpo_loss,
    weighted_sum,
    dpo_sigmoid_loss,
    ipo_loss,
    orpo_loss,
    simpo_loss,
)
from rlhfkit.data.loading import load_training_records
from rlhfkit.data.splits import drop_held_out_copies, first_n, split_by_prompt
from rlhfkit.data.tokenize import IGNORE_INDEX, pad_sequences, special_layout
from rlhfkit.recipes.common import (LoraConfig, require_examples, save_final, scaled_weights, set_threads, total_weight,
                                    weights_of, with_weight)
from rlhfkit.training.checkpoint import unwrap
from rlhfkit.training.distributed import DistInfo, barrier, cleanup, init_distributed
from rlhfkit.training.loop import TrainingConfig, fit
from rlhfkit.training.run_identity import finished_run

REFERENCES = ("auto", "cached", "lora", "none")
# beta = 0 in the config means "this loss's usual value": 0.1 for the DPO family (Rafailov et al.),
# 2.0 for SimPO (Meng et al. use 2.0-2.5, reward = beta * mean token log-prob)
DEFAULT_BETA = {"sigmoid": 0.1, "ipo": 0.1, "cdpo": 0.1, "simpo": 2.0, "orpo": 0.0}
CACHE_FILE = "reference_logps.pt"


@dataclass
class DPOConfig(TrainingConfig):
    model: str = field(default="smollm2-135m", metadata={"help": "policy: smollm2-135m, a local folder, a .gguf file or a HF name"})
    data: str = field(default="hh-rlhf", metadata={"help": "JSONL/JSON file of prompt/chosen/rejected pairs, or hh-rlhf / finegrained / oasst; a+b joins sources"})
    eval_data: str = field(default="", metadata={"help": "held-out pair file; empty = hold out eval_fraction of data"})
    eval_fraction: float = field(default=0.1, metadata={"help": "fraction held out when eval_data is empty"})
    max_train: int = field(default=0, metadata={"help": "use only the first N training pairs of the shuffled split (0 = all)"})
    max_eval: int = field(default=0, metadata={"help": "use only the first N held-out pairs (0 = all)"})
    loss: str = field(default="sigmoid", metadata={"help": "sigmoid (DPO), ipo, cdpo (label-smoothed DPO), simpo or orpo"})
    beta: float = field(default=0.0, metadata={"help": "KL strength / reward scale (0 = the loss's default: 0.1, SimPO 2.0)"})
    label_smoothing: float = field(default=0.1, metadata={"help": "cdpo: assumed probability that a label is flipped"})
    simpo_gamma: float = field(default=0.5, metadata={"help": "simpo: target reward margin gamma"})
    orpo_lambda: float = field(default=0.1, metadata={"help": "orpo: weight of the odds-ratio term beside the NLL"})
    reference: str = field(default="auto", metadata={"help": "cached (log-probs computed once, on disk), lora (adapter off), none; auto = none for simpo/orpo, else cached"})
    ties: str = field(default="drop", metadata={"help": "tied pairs: drop, or keep (trained towards equal rewards); counted either way"})
    max_length: int = field(default=512, metadata={"help": "tokens of prompt + response (the response is cut on the right)"})
    max_prompt_length: int = field(default=256, metadata={"help": "prompt tokens kept (cut on the left, so the end survives)"})
    on_error: str = field(default="raise", metadata={"help": "bad records: raise, or skip and count"})
    drop_duplicates: bool = field(default=True, metadata={
        "help": "drop exact duplicate records (counted); false keeps deliberate repeats (a weight is the better way)"})
    output_dir: str = field(default="outputs/dpo", metadata={"help": "checkpoints, metrics.jsonl, reference_logps.pt and model/"})
    learning_rate: float = field(default=1e-6, metadata={"help": "peak learning rate"})
    batch_size: int = field(default=16, metadata={"help": "global batch (pairs per optimiser step)"})
    micro_batch_size: int = field(default=4, metadata={"help": "pairs per forward pass (2x sequences)"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "fraction of steps with linear warm-up"})
    lora: LoraConfig = field(default_factory=LoraConfig)

    def validate(self) -> None:
        super().validate()
        if self.loss not in PREFERENCE_LOSSES:
            raise ValueError(f"field 'loss': {self.loss!r} is not one of {list(PREFERENCE_LOSSES)}")
        validate_reference(self.reference, self.loss in REFERENCE_FREE_LOSSES, self.lora.r, f"loss {self.loss}")
        if self.ties not in ("drop", "keep"):
            raise ValueError(f"field 'ties': {self.ties!r} is not drop or keep")
        if self.beta < 0:
            raise ValueError("field 'beta' must be >= 0 (0 = the loss's default)")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError("field 'label_smoothing' must be in [0, 0.5)")
        validate_lengths(self.max_length, self.max_prompt_length)
        if self.max_train < 0 or self.max_eval < 0:
            raise ValueError("fields 'max_train' / 'max_eval' must be >= 0 (0 = all)")


def validate_reference(reference: str, reference_free: bool, lora_r: int, what: str) -> None:
    if reference not in REFERENCES:
        raise ValueError(f"field 'reference': {reference!r} is not one of {list(REFERENCES)}")
    if reference_free and reference not in ("auto", "none"):
        raise ValueError(f"{what} uses no reference model; set reference to none (or auto)")
    if not reference_free and reference == "none":
        raise ValueError(f"{what} needs a reference model: reference cached or lora")
    if reference == "lora" and not lora_r:
        raise ValueError("reference lora needs a LoRA adapter: set --lora.r (e.g. 16)")


def validate_lengths(max_length: int, max_prompt_length: int) -> None:
    if max_prompt_length < 0 or max_length - max_prompt_length < 4:
        raise ValueError(f"max_length ({max_length}) must exceed max_prompt_length ({max_prompt_length}) "
                         "by at least 4 tokens, so every response keeps some tokens")


def resolved_reference(reference: str, reference_free: bool) -> str:
    if reference == "auto":
        return "none" if reference_free else "cached"
    return reference


# ----------------------------------------------------------------------------- tokenising
def encode_prompt(prompt: str, tokenizer, max_prompt_length: int) -> list[int]:
    """``prefix + tok(prompt)``, the prompt cut from the left (its end, next to the answer, is kept);
    ``prefix`` is what the tokenizer puts before a text (BOS for Llama-style tokenizers)."""
    prefix, _ = special_layout(tokenizer)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    keep = max(0, max_prompt_length - len(prefix))
    return list(prefix) + list(ids[len(ids) - keep:] if keep else [])


def encode_response(response: str, tokenizer) -> list[int]:
    eos = tokenizer.eos_token_id
    return list(tokenizer(response, add_special_tokens=False)["input_ids"]) + ([eos] if eos is not None else [])


def join(prompt_ids: list[int], response_ids: list[int], max_length: int) -> list[int]:
    """prompt ⊕ response, the response cut on the right to fit ``max_length``."""
    return prompt_ids + response_ids[: max_length - len(prompt_ids)]


def encode_pairs(records, tokenizer, config) -> list[dict]:
    """``{"seqs": [chosen ids, rejected ids], "prompt_len", "tie"}`` (and ``weight`` when the pair
    has one) per pair; both sequences share the prompt tokens, so only the responses differ."""
    out = []
    for r in records:
        p = encode_prompt(r.prompt, tokenizer, config.max_prompt_length)
        out.append(with_weight({"seqs": [join(p, encode_response(r.chosen, tokenizer), config.max_length),
                                          join(p, encode_response(r.rejected, tokenizer), config.max_length)],
                                "prompt_len": len(p), "tie": bool(r.tie)}, r))
    return out


def pad_scored(seqs: list[list[int]], prompt_lens: list[int], pad_id: int) -> dict:
    """Right-padded ``input_ids``/``attention_mask`` and ``labels`` = ids on response tokens,
    -100 on prompt and padding (so a row's log-prob sums only its response)."""
    ids, mask = pad_sequences(seqs, pad_id, side="right")
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    for i, n in enumerate(prompt_lens):
        labels[i, :n] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def make_collate(pad_id: int):
    def collate(examples: list[dict]) -> dict:
        # chosen and rejected in one forward pass: rows [0, n) chosen, [n, 2n) rejected
        seqs = [e["seqs"][0] for e in examples] + [e["seqs"][1] for e in examples]
        batch = pad_scored(seqs, [e["prompt_len"] for e in examples] * 2, pad_id)
        batch["tie"] = torch.tensor([e["tie"] for e in examples])
        if "ref" in examples[0]:
            batch["ref"] = torch.tensor([e["ref"] for e in examples], dtype=torch.float64)  # [n, 2]
        if (weights := weights_of(examples)) is not None:
            batch["weight"] = weights
        return batch

    return collate


# ----------------------------------------------------------------------------- log-probs
# causal LMs whose logits are exactly lm_head(final hidden state)
PLAIN_HEAD_MODELS = {"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo", "olmo2", "smollm3"}


def decoder_and_head(model):
    """``(decoder, lm_head)`` of a plain (or LoRA-wrapped) Hugging Face causal LM whose logits are
    just ``lm_head(decoder(...).last_hidden_state)``, else None: distributed wrappers (whose own
    forward must run for gradient sync / unsharding) and models that transform their logits
    further (soft-capping, logit scaling) take the ordinary full-logits path."""
    from torch.nn.parallel import DistributedDataParallel

    from rlhfkit.training.distributed import is_sharded

    if isinstance(model, DistributedDataParallel) or is_sharded(model):
        return None
    config = getattr(model, "config", None)
    # an allow-list: other architectures scale or cap their logits after the head (Gemma 2,
    # Cohere, Granite, FalconH1 ...) and take the full path
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODELS:
        return None
    try:
        decoder, head = model.get_decoder(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if decoder is None or head is None or decoder is model:
        return None
    return decoder, head


def sequence_logps(model, input_ids, attention_mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of response-token log-probs [N], response token counts [N]) for right-padded rows.
    Position ids come from the mask (docs/PPO_CHECKLIST.md #2 (padding-aware positions)).

    Logits are computed only where a label is scored: the decoder's hidden states at the K
    response positions go through the LM head ([K, V] instead of [N, T, V]; in HH-style data
    most tokens are prompt, so this saves most of the head's matmul, its log-softmax and their
    memory). Models without a separable head use the full logits (same numbers)."""
    from rlhfkit.models import position_ids_from_mask

    device = next(unwrap(model).parameters()).device
    input_ids, attention_mask, labels = input_ids.to(device), attention_mask.to(device), labels.to(device)
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask,
                  position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    target = labels[:, 1:]
    scored = target != IGNORE_INDEX
    split = decoder_and_head(model)
    if split is None:
        logits = model(**kwargs).logits
        return token_logprobs(logits[:, :-1], target).sum(-1), scored.sum(-1)
    decoder, head = split
    hidden = decoder(**kwargs).last_hidden_state[:, :-1]  # position t predicts token t + 1
    logits = head(hidden[scored])  # [K, V]
    token_lp = token_logprobs(logits.float().unsqueeze(0), target[scored].unsqueeze(0))[0]  # [K]
    rows = torch.arange(target.shape[0], device=device).unsqueeze(1).expand_as(target)[scored]
    sums = torch.zeros(target.shape[0], dtype=token_lp.dtype, device=device).index_add(0, rows, token_lp)
    return sums, scored.sum(-1)


def reference_forward(model, input_ids, attention_mask, labels) -> torch.Tensor:
    """Reference log-probs: the policy with its LoRA adapter off, no gradient."""
    from rlhfkit.models import reference_context

    with torch.no_grad(), reference_context(unwrap(model)) as ref:
        return sequence_logps(ref, input_ids, attention_mask, labels)[0]


# ----------------------------------------------------------------------------- reference cache
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
def compute_reference(model, examples: list[dict], pad_id: int, micro_batch_size: int,
                      desc: str = "") -> torch.Tensor:
    """``[len(examples), S]`` float64 log-probs of each example's S sequences under ``model``
    (a progress bar when ``desc`` is given: on a CPU this pass over every pair takes minutes)."""
    from rlhfkit.training.logging import progress_bar

    was_training = model.training
    model.eval()
    n_seqs = len(examples[0]["seqs"]) if examples else 0
    out = torch.zeros(len(examples), n_seqs, dtype=torch.float64)
    step = max(1, micro_batch_size)
    with progress_bar(len(examples), desc=desc, enabled=bool(desc), unit="example") as bar:
        for i in range(0, len(examples), step):
            chunk = examples[i:i + step]
            seqs = [s for e in chunk for s in e["seqs"]]
            lens = [e["prompt_len"] for e in chunk for _ in e["seqs"]]
            b = pad_scored(seqs, lens, pad_id)
            logps = sequence_logps(model, b["input_ids"], b["attention_mask"], b["labels"])[0]
            out[i:i + len(chunk)] = logps.double().cpu().view(len(chunk), n_seqs)
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
    from rlhfkit.training.checkpoint import load_failure

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
    from rlhfkit.core.precision import running_at

    path = Path(config.output_dir) / CACHE_FILE
    precision = getattr(config, "precision", "fp32")
    # bf16: the reference is computed as the policy's log-probs will be, so that at step 0 they
    # cancel as they do in float32 (and the key tells the two caches apart)
    key = cache_key(config.model + ("" if precision == "fp32" else f"|{precision}"), model, splits, config.max_length)
    status = "reused"
    if info.is_main:
        cache, problem = read_reference_cache(path, key)
        if problem is not None:
            print(f"rlhfkit: warning: {path} {problem}; computing the reference log-probs again",
                  file=sys.stderr, flush=True)
        if cache is None:
            status = "computed"
            with running_at(model, precision):
                logps = {name: compute_reference(model, ex, pad_id, config.micro_batch_size,
                                                 desc=f"reference log-probs ({name})")
                         for name, ex in splits.items()}
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


# ----------------------------------------------------------------------------- loss
def pair_loss(config, logps, lengths, ref, tie):
    """The configured loss on the concatenated batch: rows [0, n) chosen, [n, 2n) rejected."""
    n = tie.shape[0]
    c, r, lc, lr = logps[:n], logps[n:], lengths[:n], lengths[n:]
    beta = config.beta or DEFAULT_BETA[config.loss]
    if config.loss == "simpo":
        return simpo_loss(c, r, lc, lr, beta=beta, gamma=config.simpo_gamma, tie=tie)
    if config.loss == "orpo":
        return orpo_loss(c, r, lc, lr, lam=config.orpo_lambda, tie=tie)
    ref = ref.to(logps.dtype)
    rc, rr = ref[:, 0], ref[:, 1]
    if config.loss == "sigmoid":
        return dpo_sigmoid_loss(c, r, rc, rr, beta=beta, tie=tie)
    if config.loss == "cdpo":
        return cdpo_loss(c, r, rc, rr, beta=beta, label_smoothing=config.label_smoothing, tie=tie)
    return ipo_loss(c, r, rc, rr, beta=beta, chosen_lengths=lc, rejected_lengths=lr, tie=tie)


def pair_correct(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """1 where chosen's implicit reward is higher, 1/2 where equal (e.g. at the start, when the
    policy is the reference and every reward is 0), 0 otherwise. [B] float."""
    return (chosen > rejected).double() + 0.5 * (chosen == rejected).double()


def make_loss(config, reference: str):
    def loss_sum(model, batch: dict) -> tuple[torch.Tensor, dict]:
        """Sum of per-pair losses, each times its weight when pairs have weights; stats are sums
        over pairs (weighted alike), so the loop's division by the pair count (the sum of
        weights) makes them means. ``accuracy`` counts untied pairs only (ties: its maximum is
        1 - tie fraction; the held-out evaluation excludes ties from the denominator)."""
        logps, lengths = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        tie = batch["tie"].to(logps.device)
        n = tie.shape[0]
        if reference == "lora":
            ref = reference_forward(model, batch["input_ids"], batch["attention_mask"], batch["labels"]).view(2, n).T
        else:
            ref = batch["ref"].to(logps.device) if "ref" in batch else None
        out = pair_loss(config, logps, lengths, ref, tie)
        decided = ~tie
        w = batch.get("weight")
        w = None if w is None else w.to(logps.device)
        return weighted_sum(out.losses, w), {
            "reward_chosen": weighted_sum(out.chosen_rewards.detach(), w).item(),
            "reward_rejected": weighted_sum(out.rejected_rewards.detach(), w).item(),
            "margin": weighted_sum((out.chosen_rewards - out.rejected_rewards).detach(), w).item(),
            "accuracy": weighted_sum(pair_correct(out.chosen_rewards, out.rejected_rewards) * decided, w).item(),
            "ties": weighted_sum(tie.double(), w).item(),
        }

    return loss_sum


def count_pairs(batch: dict) -> int | float:
    """Pairs in the batch, or the sum of their weights when they have weights."""
    return float(batch["weight"].sum()) if "weight" in batch else int(batch["tie"].numel())


@torch.no_grad()
def evaluate(model, examples: list[dict], collate, config, reference: str) -> dict:
    """Held-out implicit-reward accuracy (untied pairs; equal rewards count 1/2), mean margin,
    mean chosen / rejected rewards, mean loss."""
    was_training = model.training
    model.eval()
    chosen, rejected, ties, loss = [], [], [], 0.0
    for i in range(0, len(examples), config.micro_batch_size):
        batch = collate(examples[i:i + config.micro_batch_size])
        logps, lengths = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        n = batch["tie"].shape[0]
        ref = (reference_forward(model, batch["input_ids"], batch["attention_mask"], batch["labels"]).view(2, n).T
               if reference == "lora" else batch.get("ref"))
        out = pair_loss(config, logps, lengths, ref, batch["tie"].to(logps.device))
        loss += out.losses.sum().item()
        chosen.append(out.chosen_rewards.cpu())
        rejected.append(out.rejected_rewards.cpu())
        ties.append(batch["tie"])
    model.train(was_training)
    if not examples:
        return {}
    c, r, tie = torch.cat(chosen), torch.cat(rejected), torch.cat(ties)
    decided = ~tie
    return {
        "eval_accuracy": pair_correct(c[decided], r[decided]).mean().item() if decided.any() else float("nan"),
        "eval_margin": (c - r)[decided].mean().item() if decided.any() else float("nan"),
        "eval_reward_chosen": c.mean().item(),
        "eval_reward_rejected": r.mean().item(),
        "eval_loss": loss / len(examples),
        "eval_pairs": len(examples),
        "eval_ties": int(tie.sum()),
    }


# ----------------------------------------------------------------------------- data
def load_pairs(source: str, config, label: str) -> tuple[list, int]:
    """Pairs with ties handled as configured; returns (records, number of ties seen)."""
    records = load_training_records(source, "pairs", config.on_error, ties="keep",
                                    drop_duplicates=config.drop_duplicates)
    n_ties = sum(1 for r in records if r.tie)
    if config.ties == "drop":
        records = [r for r in records if not r.tie]
    if n_ties:
        print(f"{label}: {n_ties} tied pairs {'dropped' if config.ties == 'drop' else 'kept (trained towards equal rewards)'}")
    return records, n_ties


def run(config: DPOConfig) -> dict:
    from rlhfkit.models import apply_lora, load_policy

    set_threads(config.threads)
    info = init_distributed()
    if (done := finished_run(config, "dpo", info)) is not None:
        cleanup(info)
        return done
    torch.manual_seed(config.seed)
    reference = resolved_reference(config.reference, config.loss in REFERENCE_FREE_LOSSES)
    records, n_ties = load_pairs(config.data, config, config.data)
    if config.eval_data:
        eval_records, _ = load_pairs(config.eval_data, config, config.eval_data)
        train_records = drop_held_out_copies(records, eval_records, config.data)
    else:
        train_records, eval_records = split_by_prompt(records, config.eval_fraction, config.seed, shuffle=True)
    train_records, eval_records = first_n(train_records, config.max_train), first_n(eval_records, config.max_eval)
    # before the model loads and the reference cache is written: a failure leaves nothing behind
    require_examples(len(train_records), config.batch_size, config.data, len(eval_records), total_weight(train_records))
    train_records = scaled_weights(train_records)
    model, tokenizer = load_policy(config.model, padding_side="right")
    train = encode_pairs(train_records, tokenizer, config)
    held = encode_pairs(eval_records, tokenizer, config)
    pad_id = tokenizer.pad_token_id
    if reference == "cached":
        # before any LoRA: the reference is the initial policy
        cached_reference(config, model, {"train": train, "eval": held}, pad_id, info)
    if config.lora.r:
        model = apply_lora(model, r=config.lora.r, alpha=config.lora.alpha, dropout=config.lora.dropout,
                           target_modules=config.lora.target_modules)
    collate = make_collate(pad_id)
    eval_fn = (lambda m: evaluate(m, held, collate, config, reference)) if held else None
    before = {}
    if info.is_main:
        print(f"dpo ({config.loss}, reference {reference}): {len(train)} training and {len(held)} held-out pairs, "
              f"model {config.model}")
        if held and reference in ("cached", "lora"):
            # the policy starts as its reference: every implicit reward is 0 and the accuracy is
            # 1/2 by construction (ties count 1/2), so no pass over the held-out set is spent on it
            before = {"eval_accuracy": 0.5}
        elif held:
            from rlhfkit.core.precision import running_at

            with running_at(model, config.precision):  # as fit evaluates
                before = evaluate(model, held, collate, config, reference)
    metrics = fit(model, train, collate, make_loss(config, reference), count_pairs, config, info, eval_fn,
                  desc=f"dpo-{config.loss}", unit="pairs")
    if info.is_main:
        metrics["ties_seen"] = n_ties
        metrics["ties_kept"] = n_ties if config.ties == "keep" else 0
        if before:
            metrics["eval_accuracy_before"] = before["eval_accuracy"]
            print(f"dpo: held-out implicit-reward accuracy {before['eval_accuracy']:.3f} -> "
                  f"{metrics['eval_accuracy']:.3f}, margin {metrics['eval_margin']:.4f}")
    save_final(model, tokenizer, config, metrics, info)
    cleanup(info)
    return metrics
