"""The reward-source interface, its implementations and the config-string parser."""

from __future__ import annotations

import importlib
import re
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch

from .judges import JUDGES, JudgeSource


@runtime_checkable
class RewardSource(Protocol):
    """``source(prompts, responses) -> FloatTensor [B]`` (CPU, float32): one score per pair.
    Responses are the decoded texts without the EOS token."""

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor: ...


class RewardModelSource:
    """A trained scalar reward model (``models.load_reward_model``) reading ``prompt ⊕ response``
    tokenised exactly as the reward recipe trained it (``data.tokenize.tokenize_pair``: the
    same trailing EOS, left truncation), right padded; ``models.reward_scores`` reads the last
    real token and is padding invariant (docs/PPO_CHECKLIST.md #5 (reward on the last real
    token)). Scored in chunks of ``batch_size``."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, max_length: int = 512, batch_size: int = 32):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)

    @classmethod
    def load(cls, path: str, **kwargs: Any) -> "RewardModelSource":
        from rlhfkit.models import load_reward_model

        model, tokenizer = load_reward_model(path, trained_head=True)  # a fresh head would score noise
        return cls(model, tokenizer, **kwargs)

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        from rlhfkit.data.tokenize import pad_sequences, tokenize_pair
        from rlhfkit.models import reward_scores

        device = next(self.model.parameters()).device
        seqs = [tokenize_pair(p, r, self.tokenizer, self.max_length) for p, r in zip(prompts, responses)]
        out = []
        for i in range(0, len(seqs), self.batch_size):
            ids, mask = pad_sequences(seqs[i : i + self.batch_size], self.tokenizer.pad_token_id, side="right")
            out.append(reward_scores(self.model, ids.to(device), mask.to(device)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def __repr__(self) -> str:
        return f"RewardModelSource({type(self.model).__name__})"


class FunctionSource:
    """A Python function named ``package.module:function`` (or given directly) called as
    ``fn(prompts: list[str], responses: list[str]) -> sequence of floats`` (list, numpy array or
    tensor) with one score per pair."""

    def __init__(self, fn: str | Callable):
        if isinstance(fn, str):
            module, sep, name = fn.rpartition(":")
            if not sep or not module or not name:
                raise ValueError(f"a function reward is 'package.module:function', got {fn!r}")
            try:
                obj = importlib.import_module(module)
            except ImportError as err:
                raise ValueError(f"cannot import module {module!r} for reward {fn!r}: {err}") from None
            for part in name.split("."):
                if not hasattr(obj, part):
                    raise ValueError(f"module {module!r} has no attribute {name!r}")
                obj = getattr(obj, part)
            self.name, self.fn = fn, obj
        else:
            self.name, self.fn = getattr(fn, "__name__", repr(fn)), fn
        if not callable(self.fn):
            raise ValueError(f"{self.name!r} is not callable")

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        out = torch.as_tensor(self.fn(list(prompts), list(responses)), dtype=torch.float32).reshape(-1).cpu()
        if out.numel() != len(responses):
            raise ValueError(
                f"reward function {self.name!r} returned {out.numel()} scores for {len(responses)} responses"
            )
        return out

    def __repr__(self) -> str:
        return f"FunctionSource({self.name!r})"


class WeightedSum:
    """``sum_i w_i * source_i(prompts, responses)``. After each call ``last_components`` holds
    every term's unweighted scores by name (for logging)."""

    def __init__(self, terms: Sequence[tuple[float, Any]], names: Sequence[str] | None = None):
        if not terms:
            raise ValueError("a weighted sum needs at least one term")
        self.terms = [(float(w), s) for w, s in terms]
        self.names = list(names) if names is not None else [repr(s) for _, s in self.terms]
        self.last_components: dict[str, torch.Tensor] = {}

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        total = torch.zeros(len(responses), dtype=torch.float32)
        self.last_components = {}
        for (w, source), name in zip(self.terms, self.names):
            s = source(prompts, responses).float().reshape(-1)
            self.last_components[name] = s
            total = total + w * s
        return total

    def __repr__(self) -> str:
        return " + ".join(f"{w:g}*{n}" for (w, _), n in zip(self.terms, self.names))


_WEIGHT = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*\*\s*(.+?)\s*$")


def parse_reward_spec(spec: str) -> list[tuple[float, str]]:
    """``"0.7*vader + -0.3*toxicity + rm:PATH"`` -> ``[(0.7, "vader"), (-0.3, "toxicity"),
    (1.0, "rm:PATH")]``. Terms are separated by ``+``; a term is ``[weight*]source``; a bare
    leading ``-`` negates (``-toxicity``)."""
    if not spec or not spec.strip():
        raise ValueError("empty reward spec")
    terms = []
    for raw in spec.split("+"):
        term = raw.strip()
        if not term:
            raise ValueError(f"empty term in reward spec {spec!r}")
        m = _WEIGHT.match(term)
        if m:
            terms.append((float(m.group(1)), m.group(2)))
        elif term.startswith("-"):
            terms.append((-1.0, term[1:].strip()))
        else:
            terms.append((1.0, term))
    return terms


class EnsembleSource:
    """Several reward models combined per response (``core.reward_shaping.combine_ensemble``:
    ``mean``, ``min`` or ``uwo`` = mean - lambda * variance). Spec term:
    ``ensemble:HOW:PATH1,PATH2,...`` with HOW ``mean``, ``min`` or ``uwo=LAMBDA``. After each
    call ``last_members`` holds the members' scores ``[M, N]`` (for logging their spread)."""

    def __init__(self, members: Sequence[Any], how: str = "mean", uwo_lambda: float = 0.0):
        from rlhfkit.core.reward_shaping import combine_ensemble

        if not members:
            raise ValueError("an ensemble needs at least one member")
        combine_ensemble(torch.zeros(1, 1), how, uwo_lambda)  # a bad combination fails here, not mid-run
        self.members, self.how, self.uwo_lambda = list(members), how, float(uwo_lambda)
        self.last_members = torch.zeros(0)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        from rlhfkit.core.reward_shaping import combine_ensemble

        self.last_members = torch.stack([m(prompts, responses).float().reshape(-1) for m in self.members])
        return combine_ensemble(self.last_members, self.how, self.uwo_lambda)

    def __repr__(self) -> str:
        how = f"uwo={self.uwo_lambda:g}" if self.how == "uwo" else self.how
        return f"EnsembleSource({how}, {len(self.members)} members)"


def parse_ensemble_term(rest: str) -> tuple[str, float, list[str]]:
    """``"uwo=0.5:A,B"`` -> ``("uwo", 0.5, ["A", "B"])``; ``"min:A,B"`` -> ``("min", 0.0, [...])``."""
    import math

    from rlhfkit.core.reward_shaping import ENSEMBLE_COMBINATIONS

    how, sep, paths = rest.partition(":")
    lam = 0.0
    if how == "uwo":
        raise ValueError("ensemble: uwo needs its weight, uwo=LAMBDA (uwo=0 would be the plain mean)")
    if how.startswith("uwo="):
        try:
            lam = float(how[4:])
        except ValueError:
            raise ValueError(f"ensemble: uwo=LAMBDA needs a number, got {how!r}") from None
        if not math.isfinite(lam) or lam < 0:
            raise ValueError(f"ensemble: uwo lambda must be a finite number >= 0, got {how[4:]!r}")
        how = "uwo"
    # members are reward-model paths; an "rm:" prefix (as in a single term) is accepted
    members = [p.strip().removeprefix("rm:") for p in paths.split(",") if p.strip()]
    judges = [m for m in members if m.partition(":")[0] in JUDGES]
    if judges:
        raise ValueError(
            f"ensemble members are reward-model paths, not judges ({', '.join(judges)}): "
            "add judges as their own terms, e.g. 'ensemble:min:A,B + 0.1*vader'"
        )
    if not sep or how not in ENSEMBLE_COMBINATIONS or not members:
        raise ValueError(
            f"an ensemble term is ensemble:HOW:PATH1,PATH2,... with HOW mean, min or uwo=LAMBDA, got 'ensemble:{rest}'"
        )
    return how, lam, members


def _single(term: str, rm_kwargs: dict) -> Any:
    kind, sep, rest = term.partition(":")
    if kind == "rm" and sep:
        return RewardModelSource.load(rest, **rm_kwargs)
    if kind == "ensemble" and sep:
        how, lam, members = parse_ensemble_term(rest)
        return EnsembleSource([RewardModelSource.load(m, **rm_kwargs) for m in members], how, lam)
    if kind == "fn" and sep:
        return FunctionSource(rest)
    if kind in JUDGES:
        return JudgeSource(kind, rest if sep else None)
    if sep and kind and rest:
        return FunctionSource(term)  # bare package.module:function
    raise ValueError(
        f"unknown reward source {term!r}: use a judge ({', '.join(sorted(JUDGES))}), "
        "rm:PATH, ensemble:HOW:PATH1,PATH2 or fn:package.module:function"
    )


def check_reward_spec(spec: str) -> None:
    """Raise ``ValueError`` (saying which term) if ``spec`` cannot be built: a malformed sum or
    weight, a misspelt judge, a function that does not import. Every term is built except
    reward models, whose ``rm:PATH`` is only checked for a path (a folder or hub name is
    resolved when it loads). Configs call this in ``validate`` so that a typo stops the command
    before any model or data loads, with the field named."""
    for _, term in parse_reward_spec(spec):
        kind, sep, rest = term.partition(":")
        if kind == "rm" and sep:
            if not rest.strip():
                raise ValueError(f"'rm:' needs a reward model path or name in {spec!r}")
            continue
        if kind == "ensemble" and sep:
            parse_ensemble_term(rest)
            continue
        _single(term, {})


def check_reward_field(name: str, spec: str) -> None:
    """``check_reward_spec`` for the config field ``name``; the error names the field."""
    try:
        check_reward_spec(spec)
    except ValueError as err:
        raise ValueError(f"field '{name}': {err}") from None


def build_reward(spec: str | Callable, **rm_kwargs: Any):
    """A ``RewardSource`` from a config string (see ``parse_reward_spec``), or a callable as is.
    A single unweighted term gives that source itself; anything else a ``WeightedSum``.
    ``rm_kwargs`` go to ``RewardModelSource`` (``max_length``, ``batch_size``)."""
    if callable(spec) and not isinstance(spec, str):
        return spec
    terms = parse_reward_spec(spec)
    sources = [(w, _single(t, rm_kwargs)) for w, t in terms]
    if len(sources) == 1 and sources[0][0] == 1.0:
        return sources[0][1]
    return WeightedSum(sources, names=[t for _, t in terms])
