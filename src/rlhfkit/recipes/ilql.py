"""ILQL: offline token-level Q-learning from rewarded responses (Snell et al. 2022), the
Q-learning-style value method next to the policy-gradient recipes.

    rlhfkit ilql --data hh-rlhf --model outputs/sft/model --beta 4 --eval_reward vader

Learns, on the frozen features of ``model`` (the behaviour policy: the model that wrote the data
or one fine-tuned on it), two Q heads ``Q_i(s, .)`` over the vocabulary, their slowly moving
targets and a value head ``V(s)``, with the losses of ``core.value_learning.ilql_losses``; then
decodes with ``logits + beta * (Q(s, .) - V(s))`` (``ilql_generate``): no policy gradient, no
on-policy samples, only the data. The backbone stays frozen, so its features are computed once
and the heads train in seconds to minutes on a CPU; the model's own weights are untouched and
``beta = 0`` gives back its samples exactly.

A response cut at ``max_response_length`` is still treated as ended there, with its full reward
after the cut (the data says nothing about what would have followed).

Data: ``pairs`` (chosen earns ``chosen_reward``, rejected ``rejected_reward``), ``ratings``
(scaled to [-1, 1] over the record's scale) or ``thumbs`` (up +1, down -1); a named set or a
file. Held out by prompt (``eval_fraction``): with ``eval_reward`` (any reward spec), the
recipe samples answers to held-out prompts with ``beta = 0`` and with ``beta`` and reports both
mean rewards. Outputs: ``heads.safetensors``, ``ilql.json`` (settings and metrics),
``metrics.jsonl``.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from rlhfkit.core.value_learning import advantage_logits, ilql_losses
from rlhfkit.data.loading import load_training_records
from rlhfkit.data.splits import draw_in_order, split_by_prompt
from rlhfkit.training.run_identity import with_content

KINDS = ("pairs", "ratings", "thumbs")


@dataclass
class ILQLConfig:
    data: str = field(
        default="hh-rlhf",
        metadata={
            "help": "rewarded responses: a pairs / ratings / thumbs file or a named set (hh-rlhf, finegrained, oasst)"
        },
    )
    kind: str = field(default="pairs", metadata={"help": "what the data holds: pairs, ratings or thumbs"})
    model: str = field(
        default="smollm2-135m", metadata={"help": "the behaviour policy (frozen): smollm2-135m, a folder or .gguf"}
    )
    output_dir: str = field(default="outputs/ilql", metadata={"help": "heads.safetensors, ilql.json, metrics.jsonl"})
    chosen_reward: float = field(default=1.0, metadata={"help": "pairs: reward of the chosen response"})
    rejected_reward: float = field(default=-1.0, metadata={"help": "pairs: reward of the rejected response"})
    max_records: int = field(
        default=0, metadata={"help": "use at most this many records (pairs, ratings or thumbs; 0 = all), drawn by seed"}
    )
    eval_fraction: float = field(
        default=0.1, metadata={"help": "records held out by prompt (their prompts answer the evaluation)"}
    )
    max_prompt_length: int = field(default=128, metadata={"help": "prompt tokens kept (the last ones)"})
    max_response_length: int = field(
        default=64, metadata={"help": "response tokens kept (the first ones, then EOS when it fits)"}
    )
    gamma: float = field(default=1.0, metadata={"help": "discount per token"})
    tau: float = field(default=0.7, metadata={"help": "expectile of the value loss (0.5 = mean; ILQL uses 0.7)"})
    cql_alpha: float = field(default=0.1, metadata={"help": "weight of the conservative (CQL) term"})
    target_update: float = field(default=0.01, metadata={"help": "Polyak rate of the target Q heads per step"})
    learning_rate: float = field(
        default=1e-4,
        metadata={"help": "AdamW learning rate of the heads (1e-3 made the Q loss swing on SmolLM2-135M features)"},
    )
    epochs: float = field(default=4.0, metadata={"help": "passes over the training sequences"})
    batch_size: int = field(default=16, metadata={"help": "sequences per step"})
    feature_batch_size: int = field(default=8, metadata={"help": "sequences per forward pass of the frozen model"})
    beta: float = field(default=4.0, metadata={"help": "decoding: weight of the advantage added to the logits"})
    eval_reward: str = field(
        default="", metadata={"help": "reward spec scoring held-out answers at beta 0 and beta (empty = no sampling)"}
    )
    eval_prompts: int = field(default=32, metadata={"help": "held-out prompts answered in the evaluation"})
    max_new_tokens: int = field(default=32, metadata={"help": "evaluation: response tokens"})
    temperature: float = field(default=1.0, metadata={"help": "evaluation: sampling temperature"})
    seed: int = field(
        default=0, metadata={"help": "seed of the split, the heads' initialisation, the order and the sampling"}
    )
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch default)"})
    on_error: str = field(default="raise", metadata={"help": "bad records: raise, or skip and count"})
    resume: bool = field(
        default=True,
        metadata={
            "help": "a finished run in output_dir with the same settings is kept (with other settings: refused); false trains again and overwrites"
        },
    )

    def validate(self) -> None:
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"field 'on_error': {self.on_error!r} is not one of ['raise', 'skip']")
        if self.epochs <= 0 or self.learning_rate <= 0:
            raise ValueError("fields 'epochs' and 'learning_rate' must be > 0")
        if self.max_records < 0:
            raise ValueError("field 'max_records' must be >= 0 (0 = all)")
        if self.kind not in KINDS:
            raise ValueError(f"field 'kind': {self.kind!r} is not one of {list(KINDS)}")
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"field 'eval_fraction': {self.eval_fraction} is not in [0, 1)")
        if not 0 < self.tau < 1:
            raise ValueError(f"field 'tau': {self.tau} is not in (0, 1)")
        if not 0 < self.target_update <= 1:
            raise ValueError(f"field 'target_update': {self.target_update} is not in (0, 1]")
        if not 0 <= self.gamma <= 1:
            raise ValueError(f"field 'gamma': {self.gamma} is not in [0, 1]")
        for name in ("max_prompt_length", "max_response_length", "batch_size", "feature_batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"field '{name}' must be >= 1")
        if self.eval_reward:
            from rlhfkit.rewards import check_reward_field

            check_reward_field("eval_reward", self.eval_reward)


class ILQLHeads(nn.Module):
    """Two Q heads ``hidden -> vocab``, their targets (copies that follow them slowly, no
    gradient), and a value head. The Q heads start from small independent random weights
    (``init_std``), so they differ and ``min_i Q_i`` has something to take the minimum of (two
    heads started equal would get equal gradients and stay equal); biases and V start at 0, so
    ``beta * (Q - V)`` starts near 0: decoding begins as the model."""

    def __init__(self, hidden: int, vocab: int, seed: int = 0, init_std: float = 1e-3):
        super().__init__()
        self.q = nn.ModuleList(nn.Linear(hidden, vocab) for _ in range(2))
        self.target_q = nn.ModuleList(nn.Linear(hidden, vocab) for _ in range(2))
        self.v = nn.Linear(hidden, 1)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for q, t in zip(self.q, self.target_q):
                q.weight.copy_(torch.randn(q.weight.shape, generator=g) * init_std)
                nn.init.zeros_(q.bias)
                t.load_state_dict(q.state_dict())
            nn.init.zeros_(self.v.weight)
            nn.init.zeros_(self.v.bias)
        self.target_q.requires_grad_(False)

    def forward(self, h: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        return [q(h) for q in self.q], self.v(h).squeeze(-1)

    def target_taken(self, h: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``min_i target_Q_i(s_t, a_t)`` ``[B, T]``."""
        with torch.no_grad():
            return (
                torch.stack([q(h).gather(-1, actions.unsqueeze(-1)).squeeze(-1) for q in self.target_q]).min(0).values
            )

    def q_values(self, h: torch.Tensor) -> torch.Tensor:
        """``min_i Q_i(s, .)`` for decoding."""
        return torch.stack([q(h) for q in self.q]).min(0).values

    @torch.no_grad()
    def update_targets(self, rate: float) -> None:
        for q, t in zip(self.q, self.target_q):
            for p, tp in zip(q.parameters(), t.parameters()):
                tp.lerp_(p, rate)


def rewarded_responses(config: ILQLConfig) -> list[dict]:
    """``{"prompt", "response", "reward"}`` rows from the data (see the module docstring)."""
    records = draw_in_order(
        load_training_records(config.data, config.kind, config.on_error), config.max_records, config.seed
    )
    rows = []
    for r in records:
        if config.kind == "pairs":
            if getattr(r, "tie", False):
                continue
            rows.append({"prompt": r.prompt, "response": r.chosen, "reward": config.chosen_reward})
            rows.append({"prompt": r.prompt, "response": r.rejected, "reward": config.rejected_reward})
        elif config.kind == "ratings":
            mid, half = (r.scale_max + r.scale_min) / 2, (r.scale_max - r.scale_min) / 2
            if half <= 0:
                raise ValueError(
                    f"{config.data}: a rating's scale_max must be above its scale_min "
                    f"(got {r.scale_min} to {r.scale_max})"
                )
            rows.append({"prompt": r.prompt, "response": r.completion, "reward": (r.rating - mid) / half})
        else:
            rows.append({"prompt": r.prompt, "response": r.completion, "reward": 1.0 if r.label else -1.0})
    if not rows:
        raise ValueError(f"{config.data}: no rewarded responses")
    return rows


def encode(rows: list[dict], tok, config: ILQLConfig) -> list[dict]:
    """Prompt ids (the last ``max_prompt_length``; BOS when empty) and response ids (the first
    ``max_response_length``, EOS appended when it fits: a response that is cut has no end)."""
    from rlhfkit.rollout import prompt_token_ids

    out = []
    for r in rows:
        p = prompt_token_ids(r["prompt"], tok, config.max_prompt_length)
        a = tok(r["response"], add_special_tokens=False)["input_ids"]
        a = (a + [tok.eos_token_id]) if len(a) < config.max_response_length else a[: config.max_response_length]
        out.append({"prompt_ids": p, "actions": a, "reward": float(r["reward"])})
    return out


@torch.no_grad()
def features(model, seqs: list[dict], batch_size: int, pad_id: int) -> list[torch.Tensor]:
    """The frozen model's last hidden state at each state ``s_t`` (the position whose output
    predicts ``a_t``): ``[T, H]`` per sequence."""
    from rlhfkit.training.logging import progress_bar

    feats = []
    bar = progress_bar(len(seqs), desc="ilql: features", unit="response")
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start : start + batch_size]
        full = [s["prompt_ids"] + s["actions"] for s in chunk]
        L = max(map(len, full))
        ids = torch.full((len(full), L), pad_id, dtype=torch.long)
        mask = torch.zeros((len(full), L), dtype=torch.long)
        for i, f in enumerate(full):  # right padding: positions need no correction
            ids[i, : len(f)], mask[i, : len(f)] = torch.tensor(f), 1
        h = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        for i, s in enumerate(chunk):
            P, T = len(s["prompt_ids"]), len(s["actions"])
            feats.append(h[i, P - 1 : P - 1 + T].float().clone())
        bar.update(len(chunk))
    bar.close()
    return feats


def _batch(seqs: list[dict], feats: list[torch.Tensor], idx: list[int]):
    T = max(len(seqs[i]["actions"]) for i in idx)
    H = feats[idx[0]].shape[-1]
    h = torch.zeros(len(idx), T, H)
    actions = torch.zeros(len(idx), T, dtype=torch.long)
    rewards = torch.zeros(len(idx), T)
    mask = torch.zeros(len(idx), T)
    for b, i in enumerate(idx):
        n = len(seqs[i]["actions"])
        h[b, :n], actions[b, :n], mask[b, :n] = feats[i], torch.tensor(seqs[i]["actions"]), 1
        rewards[b, n - 1] = seqs[i]["reward"]  # the sequence's reward after its last token
    return h, actions, rewards, mask


@torch.no_grad()
def ilql_generate(
    model,
    heads: ILQLHeads | None,
    tok,
    prompt: str,
    beta: float,
    max_new_tokens: int,
    temperature: float = 1.0,
    seed: int = 0,
    max_prompt_length: int = 128,
) -> str:
    """One answer to ``prompt`` from ``softmax((logits + beta * (Q - V)) / temperature)`` (0 =
    greedy), token by token with the model's KV cache; ``heads=None`` or ``beta=0`` samples the
    model itself. Ends at EOS or after ``max_new_tokens``; returns the text without EOS."""
    from rlhfkit.rollout import prompt_token_ids

    g = torch.Generator().manual_seed(seed)
    inp = torch.tensor([prompt_token_ids(prompt, tok, max_prompt_length)])
    past, out = None, []
    for _ in range(max_new_tokens):
        res = model(input_ids=inp, past_key_values=past, use_cache=True, output_hidden_states=heads is not None)
        past = res.past_key_values
        logits = res.logits[0, -1].float()
        if heads is not None and beta:
            h = res.hidden_states[-1][0, -1].float()
            logits = advantage_logits(logits, heads.q_values(h), heads.v(h).squeeze(-1), beta)
        if temperature == 0:
            token = int(logits.argmax())
        else:
            token = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=g))
        if token == tok.eos_token_id:
            break
        out.append(token)
        inp = torch.tensor([[token]])
    return tok.decode(out, skip_special_tokens=True)


def load_heads(output_dir: str) -> ILQLHeads:
    from safetensors.torch import load_file

    meta = json.loads((Path(output_dir) / "ilql.json").read_text(encoding="utf-8"))
    heads = ILQLHeads(meta["hidden_size"], meta["vocab_size"])
    heads.load_state_dict(load_file(str(Path(output_dir) / "heads.safetensors")))
    return heads.eval()


def run(config: ILQLConfig) -> dict:
    from safetensors.torch import save_file

    from rlhfkit.models import load_policy
    from rlhfkit.recipes.common import set_threads
    from rlhfkit.training.logging import progress_bar

    config.validate()
    set_threads(config.threads)
    out = Path(config.output_dir)
    settings = {**asdict(config), "model": with_content(config.model), "data": with_content(config.data)}
    settings.pop("threads")
    settings.pop("resume")
    done = out / "ilql.json"
    if config.resume and done.exists():
        prev = json.loads(done.read_text(encoding="utf-8"))
        if prev.get("settings") == settings:
            print(f"ilql: {out} holds this run, finished (heads.safetensors; --resume false trains again)")
            return prev["metrics"]
        from rlhfkit.training.config import ConfigError

        diffs = [
            f"{k}: {prev['settings'].get(k)!r} -> {v!r}"
            for k, v in settings.items()
            if prev.get("settings", {}).get(k) != v
        ]
        raise ConfigError(
            f"{out} holds a finished ilql run with other settings ({'; '.join(diffs)}); give another "
            "--output_dir, or --resume false to train again and overwrite it"
        )
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)

    rows = rewarded_responses(config)
    train_rows, held_rows = split_by_prompt(rows, config.eval_fraction, config.seed, prompt_of=lambda r: r["prompt"])
    model, tok = load_policy(config.model)
    model.eval().requires_grad_(False)
    seqs = encode(train_rows, tok, config)
    print(f"ilql: {len(seqs)} training responses ({len(held_rows)} held out by prompt), model {config.model}")
    feats = features(model, seqs, config.feature_batch_size, tok.pad_token_id)

    heads = ILQLHeads(feats[0].shape[-1], model.get_output_embeddings().weight.shape[0], seed=config.seed)
    opt = torch.optim.AdamW([p for p in heads.parameters() if p.requires_grad], lr=config.learning_rate)
    steps = max(1, math.ceil(config.epochs * len(seqs) / config.batch_size))
    order_rng = random.Random(config.seed)
    order: list[int] = []
    bar = progress_bar(steps, desc="ilql", unit="step")
    log = open(out / "metrics.jsonl", "w", encoding="utf-8")
    last: dict = {}
    for step in range(1, steps + 1):
        if len(order) < config.batch_size:
            more = list(range(len(seqs)))
            order_rng.shuffle(more)
            order += more
        idx, order = order[: config.batch_size], order[config.batch_size :]
        h, actions, rewards, mask = _batch(seqs, feats, idx)
        qs, v = heads(h)
        losses = ilql_losses(
            qs, heads.target_taken(h, actions), v, actions, rewards, mask, config.gamma, config.tau, config.cql_alpha
        )
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        heads.update_targets(config.target_update)
        last = {
            "step": step,
            **{k: float(x.detach()) for k, x in losses.items()},
            "v_first_token": float(v[:, 0].detach().mean()),
        }
        log.write(json.dumps(last) + "\n")
        bar.update(1)
        bar.set_postfix(loss=f"{last['loss']:.4f}")
    bar.close()
    log.close()
    save_file({k: t.contiguous() for k, t in heads.state_dict().items()}, str(out / "heads.safetensors"))

    metrics = {k: last[k] for k in ("loss", "q_loss", "v_loss", "cql_loss")}
    metrics["steps"] = steps
    if config.eval_reward and held_rows:
        from rlhfkit.rewards import build_reward

        prompts = sorted({r["prompt"] for r in held_rows})[: config.eval_prompts]
        score = build_reward(config.eval_reward)
        for name, beta in (("beta0", 0.0), ("beta", config.beta)):
            answers = [
                ilql_generate(
                    model,
                    heads,
                    tok,
                    p,
                    beta,
                    config.max_new_tokens,
                    config.temperature,
                    seed=config.seed * 1000 + i,
                    max_prompt_length=config.max_prompt_length,
                )
                for i, p in enumerate(prompts)
            ]
            metrics[f"eval_reward_{name}"] = float(score(prompts, answers).mean())
        metrics["eval_prompts"] = len(prompts)
        print(
            f"ilql: held-out reward ({config.eval_reward}) on {len(prompts)} prompts: model alone "
            f"{metrics['eval_reward_beta0']:.4f}, with beta {config.beta} {metrics['eval_reward_beta']:.4f}"
        )
    meta = {
        "settings": settings,
        "metrics": metrics,
        "hidden_size": feats[0].shape[-1],
        "vocab_size": model.get_output_embeddings().weight.shape[0],
        "model": config.model,
        "beta": config.beta,
    }
    done.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    print(f"ilql: saved {out / 'heads.safetensors'} after {steps} steps (loss {metrics['loss']:.4f})")
    return metrics
