"""Every unlearning method other than an RL agent, each registered in :mod:`baselines.registry`.

SISS inside ``SISSUnlearning-v0``, choosing lambda on equal terms with the agents:

* :mod:`baselines.static`: a constant lambda (SPEC §3), one value or a sweep (``static``);
* :mod:`baselines.vi`: adaptive lambda by variational inference (SPEC §4) (``vi``).

The methods SISS is measured against (SPEC §7), as update rules run by the env's own step
(:mod:`baselines.loop`): ``naive`` (:mod:`baselines.naive`), ``neggrad`` (:mod:`baselines.neggrad`),
``erasediff`` (:mod:`baselines.erasediff`), ``siss-nois`` (:mod:`baselines.siss_nois`),
``bernoulli`` (:mod:`baselines.bernoulli`) and ``vdu`` (:mod:`baselines.vdu`).

All of them draw the env's minibatches, step its optimiser and log the same per-step
TensorBoard scalars as the agents (``unlearn_env.episode.step_scalars``);
``baselines.registry.parse_method_spec("neggrad:superfactor=0.1")`` gives a method's entry
(runner, data needs, cost per update) and its options.
"""
