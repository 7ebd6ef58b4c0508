"""Token-level Q-learning for language models: the losses of Implicit Language Q-Learning (ILQL,
Snell et al. 2022, "Offline RL for Natural Language Generation with Implicit Language Q
Learning") and its decoding rule. Pure functions of tensors.

The MDP is the token-level one: the state ``s_t`` is the prompt and the response tokens before
``t``, the action ``a_t`` the next token, the reward 0 except at the last response token, where it
is the sequence's reward; the episode ends after the last token (its next value is 0). Shapes:
``[B, T]`` over response positions (right-padded, ``mask`` 1 on real tokens), ``[B, T, V]`` for
values of every token at a position.

- ``Q(s_t, a_t)`` regresses on ``r_t + gamma * V(s_{t+1})`` (the next value detached; 0 after the
  last token).
- ``V(s_t)`` regresses on the target network's ``min_i Q_i(s_t, a_t)`` (detached, two heads
  against over-estimation) with the expectile loss ``|tau - 1(u < 0)| u^2``, ``u = Q - V``: with
  ``tau > 0.5`` it tracks an upper expectile of Q over the data's actions, an estimate of the
  best action's value that never queries an action the data lacks (IQL, Kostrikov et al. 2021).
- a conservative term (CQL, Kumar et al. 2020): ``logsumexp_a Q(s_t, a) - Q(s_t, a_t)``, which
  pushes down the values of tokens the data never chose.

Decoding: ``logits + beta * (Q(s, a) - V(s))``: the behaviour policy (the model the data came
from) reweighted by the advantage, ``pi(a|s) ∝ pi_beta(a|s) exp(beta * A(s, a))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .masking import masked_mean


def expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """Elementwise ``|tau - 1(diff < 0)| * diff^2`` with ``diff = target - prediction``:
    ``tau = 0.5`` is half the squared error; ``tau > 0.5`` weighs under-estimates more."""
    weight = torch.where(diff < 0, 1.0 - tau, tau)
    return weight * diff.pow(2)


def next_values(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``V(s_{t+1})`` for each position: ``v`` shifted left by one, 0 after the last real token
    (the terminal state) and on padding."""
    nxt = torch.zeros_like(v)
    nxt[:, :-1] = v[:, 1:] * mask[:, 1:]
    return nxt * mask


def ilql_losses(
    q_heads: list[torch.Tensor],
    target_q_taken: torch.Tensor,
    v: torch.Tensor,
    actions: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    tau: float = 0.7,
    cql_alpha: float = 0.1,
) -> dict[str, torch.Tensor]:
    """ILQL's losses (module docstring), means over real tokens.

    Args:
        q_heads: each ``[B, T, V]``, the Q values of every token (two heads in ILQL).
        target_q_taken: ``[B, T]``, the target network's ``min_i Q_i(s_t, a_t)`` (no gradient).
        v: ``[B, T]``, ``V(s_t)``.
        actions: ``[B, T]`` long, the tokens taken.
        rewards: ``[B, T]``, the reward after each token (the sequence reward at the last).
        mask: ``[B, T]`` 1 on real response tokens.
    Returns ``{"loss", "q_loss", "v_loss", "cql_loss"}`` (``q_loss`` and ``cql_loss`` summed over
    heads)."""
    mask = mask.to(v.dtype)
    target = (rewards + gamma * next_values(v, mask)).detach()
    q_loss = v.new_zeros(())
    cql_loss = v.new_zeros(())
    for q in q_heads:
        taken = q.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        q_loss = q_loss + masked_mean((taken - target).pow(2), mask)
        ce = F.cross_entropy(q.flatten(0, 1).float(), actions.flatten(), reduction="none").view_as(mask)
        cql_loss = cql_loss + masked_mean(ce, mask)
    v_loss = masked_mean(expectile_loss(target_q_taken.detach() - v, tau), mask)
    return {"loss": q_loss + v_loss + cql_alpha * cql_loss, "q_loss": q_loss, "v_loss": v_loss, "cql_loss": cql_loss}


def advantage_logits(logits: torch.Tensor, q: torch.Tensor, v: torch.Tensor, beta: float) -> torch.Tensor:
    """ILQL's decoding logits: ``logits + beta * (Q(s, .) - V(s))``; ``q`` ``[..., V]``, ``v`` ``[...]``."""
    return logits + beta * (q - v.unsqueeze(-1))
