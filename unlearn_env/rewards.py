"""The MDP's reward modes (``RewardConfig.reward``), as pure functions of probe losses and judge scores.

Every mode's terms are returned as a dict (``info["reward_terms"]``) whose values sum to the
reward. All losses are probe losses (:mod:`unlearn_env.probes`) of theta_{t+1}, the model after
the action's update, so every term but the smoothness penalty is a function of the action's
outcome.

``paper`` (SPEC §5), terms ``siss``, ``smoothness``, ``retain_safety``::

    R_t = -L_SISS(theta_{t+1}) - alpha (lambda_t - lambda_{t-1})^2 - kappa max(0, L_r(theta_{t+1}) - L_r(theta_0))
    L_SISS = n/(n-k) L_r - (1+s) k/(n-k) L_f

``outcome``, terms ``shaping_forget``, ``shaping_retain``, ``smoothness`` and, at t = T,
``terminal_concept``, ``terminal_digit``, ``terminal_retain``::

    Phi(theta) = forget_weight min(L_f(theta)/L_f(theta_0) - 1, forget_cap) - retain_weight (L_r(theta)/L_r(theta_0) - 1)
    r_t = Phi(theta_{t+1}) - Phi(theta_t) - alpha (lambda_t - lambda_{t-1})^2  [+ terminal at t = T]
    terminal = -w_c concept_rate - w_d (1 - digit_share) - w_r (1 - retain_accuracy)

The shaping is potential-based (Ng et al., 1999): its episode sum telescopes to
Phi(theta_T) - Phi(theta_0) = Phi(theta_T), whatever the path, so it cannot change which final
model is best; it only says earlier which way the episode is going. The forget loss's rise is
capped so that a model blowing up its forget loss (NegGrad-like collapse) earns no more than
one that forgot; the terminal judge score then pays for the goal itself: the forget label drawn
as the digit, not as the concept, with the other digits intact.
"""

from __future__ import annotations

from dataclasses import dataclass

from unlearn_env import siss
from unlearn_env.config import RewardConfig

PAPER_TERMS: tuple[str, ...] = ("siss", "smoothness", "retain_safety")
OUTCOME_TERMS: tuple[str, ...] = ("shaping_forget", "shaping_retain", "smoothness")
TERMINAL_TERMS: tuple[str, ...] = ("terminal_concept", "terminal_digit", "terminal_retain")
CRASH_TERM = "crash"
ALL_TERMS: tuple[str, ...] = tuple(dict.fromkeys((*PAPER_TERMS, *OUTCOME_TERMS, *TERMINAL_TERMS, CRASH_TERM)))
"""Every reward term of every mode (a diverged step has ``crash`` alone)."""


@dataclass(frozen=True)
class ProbeLosses:
    """Plain probe losses of one model: retain (held-out retain images) and forget (the forget set)."""

    retain: float
    forget: float


@dataclass(frozen=True)
class TerminalScore:
    """The judge's verdict on the final model's fixed-noise samples (``outcome`` mode, t = T)."""

    concept_rate: float
    """Share of forget-label samples judged the forget concept (e.g. trousers)."""
    digit_share: float
    """Share of forget-label samples judged the forget digit."""
    retain_accuracy: float
    """Share of retain-label samples judged the digit they were asked for."""


def smoothness(lam: float, prev_lambda: float, cfg: RewardConfig) -> float:
    """-alpha (lambda_t - lambda_{t-1})^2."""
    return -cfg.alpha * (lam - prev_lambda) ** 2


def paper_terms(
    probe: ProbeLosses, probe_0: ProbeLosses, lam: float, prev_lambda: float, n: int, k: int, superfactor: float,
    cfg: RewardConfig,
) -> dict[str, float]:
    """SPEC §5's reward terms on the probe losses of theta_{t+1} (``probe``) and theta_0 (``probe_0``)."""
    return {
        "siss": -float(siss.siss_objective(probe.retain, probe.forget, n, k, superfactor)),
        "smoothness": smoothness(lam, prev_lambda, cfg),
        "retain_safety": -cfg.kappa * max(0.0, probe.retain - probe_0.retain),
    }


def potential_parts(probe: ProbeLosses, probe_0: ProbeLosses, cfg: RewardConfig) -> tuple[float, float]:
    """The forget and retain parts of Phi(theta); Phi(theta_0) = 0."""
    forget = cfg.forget_weight * min(probe.forget / probe_0.forget - 1.0, cfg.forget_cap)
    retain = -cfg.retain_weight * (probe.retain / probe_0.retain - 1.0)
    return forget, retain


def outcome_terms(
    probe: ProbeLosses, probe_prev: ProbeLosses, probe_0: ProbeLosses, lam: float, prev_lambda: float,
    cfg: RewardConfig,
) -> dict[str, float]:
    """The ``outcome`` mode's shaping and smoothness terms of a step from theta_t (``probe_prev``) to theta_{t+1}."""
    forget, retain = potential_parts(probe, probe_0, cfg)
    forget_prev, retain_prev = potential_parts(probe_prev, probe_0, cfg)
    return {
        "shaping_forget": forget - forget_prev,
        "shaping_retain": retain - retain_prev,
        "smoothness": smoothness(lam, prev_lambda, cfg),
    }


def terminal_terms(score: TerminalScore, cfg: RewardConfig) -> dict[str, float]:
    """The ``outcome`` mode's terminal terms from the judge's score of the final model."""
    return {
        "terminal_concept": -cfg.terminal_concept_weight * score.concept_rate,
        "terminal_digit": -cfg.terminal_digit_weight * (1.0 - score.digit_share),
        "terminal_retain": -cfg.terminal_retain_weight * (1.0 - score.retain_accuracy),
    }
