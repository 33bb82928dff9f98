"""Run profiles: one name selects every default of every notebook.

``smoke``  CI: tiny sizes, the whole pipeline in minutes.
``cpu``    default: the full pipeline for real on 2 CPU cores with SmolLM2-135M-Instruct (~60 minutes).
``cpu_long`` the same data, with the training and evaluation sizes a statistically meaningful
           result needs on 2 cores (~2.5 hours): 384 SFT trajectories, 10 GRPO steps with groups of 8,
           every stage on every held-out question x 4 rollouts.
``gpu``    one CUDA GPU: a 7B-class instruct model from the hub, 4-bit QLoRA (unsloth if present).

A notebook's ``parameters`` cell sets ``PROFILE`` and leaves the other parameters at
``None``; :func:`resolve` fills every ``None`` from the profile and keeps explicit
values, so ``papermill -p PROFILE smoke -p RARE_MAX_DF 5`` works as expected.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from .engine import DEFAULT_COMPUTE_TYPE, DEFAULT_ENGINE, DEFAULT_ENGINE_BATCH
from .errors import ConfigError

PROFILES: tuple[str, ...] = ("smoke", "cpu", "cpu_long", "gpu")

# every stage that generates text picks its engine the same way (medkit.engine)
_ENGINE: dict[str, Any] = {
    "ENGINE": DEFAULT_ENGINE,                    # auto (OpenVINO on CPU where it runs, else transformers) | openvino | ctranslate2 | transformers
    "ENGINE_PRECISION": DEFAULT_COMPUTE_TYPE,    # auto (bf16 on OpenVINO where the CPU has it, else float32) | float32 | bf16 (OpenVINO) | int8 (CTranslate2)
    "ENGINE_BATCH": DEFAULT_ENGINE_BATCH,        # conversations the engine schedules at once (lower it if memory is short)
}

_BASE: dict[str, dict[str, Any]] = {
    "entity_mining": {
        "SEED": 13,
        "MAX_PASSAGES": None,          # None = the whole passage corpus
        "BACKEND": "processes",        # serial | processes | dask
        "N_WORKERS": 2,
        "RARE_MAX_DF": 3,              # an entity mentioned in <= this many passages is rare
        "MIN_RELATIONS": 3,            # ...and must anchor at least this many curated relations
        "RARE_TYPES": ["disease", "gene", "drug"],
        "MAX_RARE": None,              # None = keep every rare entity that qualifies
        "DASK_SCHEDULER": None,        # address of a running Dask scheduler (BACKEND dask); None starts a local cluster
        "PUBMED_FILES": None,          # PubMed baseline files to mine instead of the definitions corpus
    },
    "kg": {
        "SEED": 13,
        "N_SEEDS": None,               # rare entities used as KG seeds (None = all)
        "HOPS": 2,                     # neighbourhood radius around each seed
        "MAX_NEIGHBOURS": 40,          # per node and relation type, to keep hubs from swamping the graph
        "MIN_COOCCURRENCE": 1,         # passages two entities must share to add a co-occurrence edge
    },
    "questions": {
        "SEED": 13,
        "N_SEEDS": None,               # KG seed entities to build questions from (None = all)
        "STRATEGY": "mixed",           # subgraph sampler: max_chain | augmented_chain | community_core_path | dual_core_bridge | mixed
        "K_MIN": 8,                    # subgraph size range (nodes)
        "K_MAX": 12,
        "MAX_HOPS": 6,                 # longest chain considered
        "MIN_HOPS": 2,                 # shorter chains are dropped
        "SHORT_SHARE": 0.0,            # share of seeds whose chain is capped at MIN_HOPS..SHORT_MAX_HOPS (qgen.hop_cap)
        "SHORT_MAX_HOPS": 3,
        "MAX_ATTEMPTS": 3,             # generation attempts per seed while a solver still answers
        "TEST_SHARE": 0.15,            # share of source entities held out for evaluation
        "SOLVER_MODEL": "local",       # no-tool solver: "local" (the profile's model), an endpoint spec, or None
        "SOLVER_MAX_NEW_TOKENS": 24,
        "SOLVER_BATCH": 16,
        "POLISH_ENDPOINT": None,       # optional OpenAI-compatible endpoint that rewrites questions
        **_ENGINE,
    },
    "trajectories": {
        "SEED": 13,
        "N_QUESTIONS": None,           # training questions to synthesise for (None = all of notebook 03's train split)
        "VARIANTS": 2,                 # KG-guided trajectories per question (variant 1 starts with a keyword search)
        # share of KG-guided trajectories given one recovery turn: a slip (no loss), its real error, the corrected
        # call (medkit.recovery). Off: at 0.5 the cpu SFT policy learned to repeat a call after an error, not to
        # fix it (results/cpu/experiments/sft_data_ablation.json)
        "RECOVERY_SHARE": 0.0,
        "MIN_TOOL_CALLS": 2,           # fewer tool calls -> rejected as too few turns
        "MAX_TOKENS": 4096,            # longer trajectories (as the model sees them) are rejected
        "FREE_QUESTIONS": 8,           # questions for free MTG rollouts by the teacher model (0 = skip)
        "TEACHER": "local",            # "local" (the profile's model) or an OpenAI-compatible endpoint spec
        "AGENT_MAX_CALLS": 10,         # model calls per free rollout (upstream uses 30)
        "AGENT_MAX_NEW_TOKENS": 192,   # per assistant turn
        "AGENT_BATCH": 8,              # conversations per local generate() batch
        "REWRITE_ENDPOINT": None,      # optional endpoint that rewrites the KG-guided thoughts
        "RERANK": False,               # dense re-ranking of search hits with the offline MiniLM embedder
        **_ENGINE,
    },
    "sft": {
        "SEED": 13,
        "N_TRAIN": None,               # accepted trajectories to train on (None = all of notebook 04's)
        "CURRICULUM": "hops",          # training order: hops = shortest chains first (shuffled within a hop count), mixed = hop counts in turn, none = shuffled
        "TRAIN_MAX_HOPS": None,        # only trajectories of at most this many hops (None = all)
        "QUANTIZE": "nf4",             # nf4 = QLoRA (4-bit base, bitsandbytes); None = plain LoRA on the full-precision base
        "MAX_LENGTH": 4096,            # tokens per trajectory; longer ones are truncated (and counted) or dropped
        "DROP_LONGER": False,          # True: train only on trajectories that fit MAX_LENGTH (a cut one loses its answer)
        "TOOLS_IN_PROMPT": True,       # False: no tool-schema block in the system prompt, in training and evaluation
        "BF16": None,                  # bf16 autocast; None = where the hardware computes bf16 natively
        "GRADIENT_CHECKPOINTING": None,  # recompute activations in the backward pass; None = on a GPU only
        "EPOCHS": 1,
        "MAX_STEPS": None,             # optimizer steps; None = EPOCHS over the data
        "BATCH_SIZE": 1,               # trajectories per forward pass
        "GRAD_ACCUM": 4,               # forward passes per optimizer step
        "LEARNING_RATE": 5e-4,
        "WARMUP_STEPS": 2,
        "LORA_R": 16,
        "LORA_ALPHA": 32,
        "LORA_DROPOUT": 0.05,
        "SAVE_STEPS": 10,              # checkpoint every N steps (training resumes from the last one)
        "CURVE": [0.25, 0.5],          # shares of training after which the adapter is snapshotted and evaluated (learning curve)
        "CURVE_K": None,               # rollouts per question at those points (None = EVAL_K)
        "EVAL_QUESTIONS": None,        # held-out questions to evaluate on (None = all)
        "EVAL_MAX_HOPS": None,         # only held-out questions with at most this many hops (None = all)
        "EVAL_K": 3,                   # rollouts per question (pass@1 = mean +- sd over them)
        "EVAL_TEMPERATURE": 0.7,       # sampling temperature of the rollouts (0 makes every rollout the same)
        "EVAL_MAX_CALLS": 30,          # model calls per rollout
        "EVAL_MAX_NEW_TOKENS": 192,    # tokens per assistant turn
        "EVAL_BATCH": 16,              # conversations per generate() batch
        **_ENGINE,
    },
    "grpo": {
        "SEED": 13,
        "START": "sft",                # sft = continue the SFT adapter (the paper's recipe); base = a fresh adapter on the base model
        "N_QUESTIONS": 64,             # training questions in the GRPO pool (notebook 03's train split)
        "POOL_CANDIDATES": 64,         # training questions probed with the starting policy to build the pool
        "POOL_PROBE_K": 4,             # probe rollouts per candidate; the pool keeps success rates strictly in (0, 1); 0 = no probe
        "MAX_HOPS": 3,                 # only training questions with at most this many hops (None = all)
        "QUESTIONS_PER_STEP": 2,       # distinct questions per optimizer step
        "NUM_GENERATIONS": 4,          # rollouts per question (the GRPO group)
        "REDRAWS": 0,                  # dynamic sampling: a group all right or all wrong is rolled out again on another pool question, up to this many times (0 = off)
        "MICRO_BATCH": None,           # rollouts per forward/backward pass (None = NUM_GENERATIONS); lower it to cut peak memory
        "MAX_STEPS": 8,                # optimizer steps
        "LEARNING_RATE": 1e-4,
        "BETA": 0.04,                  # KL coefficient against the starting adapter (0 = no reference model, no KL)
        "LOSS_TYPE": "dapo",           # TRL loss: dapo | grpo | dr_grpo | bnpo
        "SCALE_REWARDS": "group",      # advantage scaling: group | batch | none
        "TEMPERATURE": 0.7,            # sampling temperature of the rollouts
        "MAX_COMPLETION_LENGTH": 1536, # completion tokens per rollout: assistant turns + tool responses
        "TURN_MAX_NEW_TOKENS": 160,    # tokens per assistant turn
        "MAX_CALLS": 8,                # model calls per rollout
        "W_ACCURACY": 1.0,             # composite reward weights: accuracy + preference - efficiency
        "W_PREFERENCE": 0.3,
        "W_EFFICIENCY": 0.2,
        "CALL_BUDGET": 8,              # tool calls above this are penalised
        "TOKEN_BUDGET": 3072,          # tokens above this are penalised
        "GATE_PROCESS": True,          # preference (grounded, verified) and efficiency pay only alongside a right answer; False = the plain sum, which rewarded early wrong answers
        "BF16": None,                  # bf16 autocast; None = where the hardware computes bf16 natively
        "GRADIENT_CHECKPOINTING": None,  # recompute activations in the backward pass; None = on a GPU only
        "QUANTIZE": "nf4",             # base precision for a fresh adapter (START=base); an SFT adapter keeps its own
        "LORA_R": 16,                  # fresh adapter only (START=base)
        "LORA_ALPHA": 32,
        "LORA_DROPOUT": 0.05,
        "SAVE_STEPS": 2,               # checkpoint interval; a rerun resumes from the last checkpoint
        "CURVE": [0.5],                # shares of MAX_STEPS after which the adapter is kept and scored on held-out questions
        "CURVE_K": None,               # rollouts per held-out question at those checkpoints (None = notebook 05's EVAL_K)
        **_ENGINE,
        "ENGINE_SYNC_STEPS": 1,        # export the policy to the engine every N optimizer steps (1 = always on-policy)
    },
    "evaluation": {
        "ABLATIONS": ["grpo_from_base", "grpo_accuracy_only"],  # extra GRPO runs (medkit.grpo.ABLATIONS): from the base model; accuracy reward only; grpo_ungated
        "ABLATION_STEPS": None,        # optimizer steps of each ablation run (None = notebook 06's MAX_STEPS)
        "ENDPOINT_RESULTS": [],        # summaries of `python -m medkit eval-endpoint` runs, plotted as measured public-benchmark bars
    },
}

_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "entity_mining": {"MAX_PASSAGES": 4000, "BACKEND": "serial", "N_WORKERS": 1, "MAX_RARE": 300},
        "kg": {"N_SEEDS": 60, "HOPS": 1, "MAX_NEIGHBOURS": 15},
        "questions": {"N_SEEDS": 40, "MAX_ATTEMPTS": 2, "SOLVER_MAX_NEW_TOKENS": 12},
        # recovery turns on, so CI runs their path through notebooks 04 and 05 (off elsewhere: RECOVERY_SHARE)
        "trajectories": {"VARIANTS": 1, "FREE_QUESTIONS": 2, "AGENT_MAX_CALLS": 3, "AGENT_MAX_NEW_TOKENS": 48,
                         "RECOVERY_SHARE": 0.5},
        "sft": {"N_TRAIN": 8, "MAX_STEPS": 2, "MAX_LENGTH": 2048, "GRAD_ACCUM": 1, "SAVE_STEPS": 1,
                "DROP_LONGER": True, "TOOLS_IN_PROMPT": False,
                "EVAL_QUESTIONS": 2, "EVAL_K": 1, "EVAL_MAX_CALLS": 3, "EVAL_MAX_NEW_TOKENS": 32},
        "grpo": {"N_QUESTIONS": 4, "POOL_CANDIDATES": 4, "POOL_PROBE_K": 2, "MAX_HOPS": None, "QUESTIONS_PER_STEP": 1, "NUM_GENERATIONS": 2, "MAX_STEPS": 2,
                 "MAX_COMPLETION_LENGTH": 256, "TURN_MAX_NEW_TOKENS": 48, "MAX_CALLS": 3, "SAVE_STEPS": 1},
        "evaluation": {"ABLATION_STEPS": 1},
    },
    "cpu": {
        "kg": {"N_SEEDS": 3000},
        "questions": {"N_SEEDS": 2000, "SHORT_SHARE": 0.5},
        "sft": {"N_TRAIN": 64, "QUANTIZE": None, "MAX_LENGTH": 3072, "DROP_LONGER": True, "TOOLS_IN_PROMPT": False,
                "GRAD_ACCUM": 1, "LEARNING_RATE": 2e-3, "WARMUP_STEPS": 4, "SAVE_STEPS": 8,
                "EVAL_QUESTIONS": 12, "EVAL_MAX_HOPS": 4, "EVAL_TEMPERATURE": 0.3, "EVAL_MAX_CALLS": 10,
                "EVAL_MAX_NEW_TOKENS": 160},
        # MICRO_BATCH 1: a pass over 2 full-length rollouts holds 8.4 GiB of activations, over 1 4.3 GiB at 1.17x
        # the seconds per rollout (checkpointing 2: 3.6 GiB at 1.34x; results/bench/grpo_pass_memory.json); with
        # passes of 2, notebook 07 peaked at 14.6 GiB in the 2026-12-04 reference run
        # REDRAWS 2: dynamic sampling, as cpu_long (a group all right or all wrong teaches nothing)
        "grpo": {"POOL_CANDIDATES": 32, "QUESTIONS_PER_STEP": 1, "MAX_STEPS": 6, "LEARNING_RATE": 3e-4, "MAX_COMPLETION_LENGTH": 1024,
                 "MAX_CALLS": 6, "MICRO_BATCH": 1, "REDRAWS": 2},
        "evaluation": {"ABLATIONS": ["grpo_from_base"], "ABLATION_STEPS": 2},
    },
    "gpu": {
        "kg": {"N_SEEDS": 6000},
        "trajectories": {"FREE_QUESTIONS": 300, "AGENT_MAX_CALLS": 30, "AGENT_MAX_NEW_TOKENS": 512,
                         "AGENT_BATCH": 16, "MAX_TOKENS": 8192},
        "sft": {"EPOCHS": 2, "BATCH_SIZE": 2, "GRAD_ACCUM": 8, "LEARNING_RATE": 2e-4, "MAX_LENGTH": 8192,
                "SAVE_STEPS": 50, "EVAL_MAX_NEW_TOKENS": 512},
        "grpo": {"N_QUESTIONS": 2000, "MAX_HOPS": None, "QUESTIONS_PER_STEP": 4, "NUM_GENERATIONS": 8, "MAX_STEPS": 250, "REDRAWS": 2,
                 "LEARNING_RATE": 1e-5, "MAX_COMPLETION_LENGTH": 8192, "TURN_MAX_NEW_TOKENS": 512, "MAX_CALLS": 30,
                 "SAVE_STEPS": 25},
    },
}


def _with(base: dict[str, dict[str, Any]], changes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Stage-wise overrides ``base`` with ``changes`` on top (a profile derived from another)."""
    return {stage: {**base.get(stage, {}), **changes.get(stage, {})} for stage in {*base, *changes}}


# cpu_long: cpu's data stages unchanged (the same questions and trajectories), larger training and evaluation.
# Why each value (measurements and the runs that tried others: README, "The reference result: cpu_long"):
_OVERRIDES["cpu_long"] = _with(_OVERRIDES["cpu"], {
    # SFT: 384 trajectories of 2 and 3 hops in turn (vs 256 on the same 176 questions x 4: +0.082 paired, +0.105 on
    # <= 3 hops, results/cpu_long/experiments/sft_384_vs_256.json); LoRA dropout 0 trains 1.07x faster (bench_sft);
    # every held-out question (176 on the cpu data, 136 of them <= 3 hops) x 4 rollouts; the learning curve's
    # snapshot with 1 rollout (2 took 8.5 min of the 2026-12-06 reference run, 1 saves ~4 min of the 150)
    "sft": {"N_TRAIN": 384, "CURRICULUM": "mixed", "TRAIN_MAX_HOPS": 3, "LORA_DROPOUT": 0.0,
            "EVAL_QUESTIONS": None, "EVAL_MAX_HOPS": None, "EVAL_K": 4, "CURVE": [0.5], "CURVE_K": 1},
    # GRPO: groups of 8 in passes of 1 rollout (passes of 2 peaked at 15.9 GB); rollouts sampled as notebook 05
    # evaluates (temperature 0.3, 10 calls: results/cpu/experiments/probe_settings.json); LEARNING_RATE 3e-5 with
    # up to 3 redraws keeps every group mixed at KL < 0.01 (at 3e-4 and 1e-4 the updates made groups all right or
    # all wrong: results/cpu_long/experiments/grpo_group_diversity.json). Sized for the 150-minute budget: with 20
    # steps, 128 probed candidates and a 2-rollout checkpoint, 05-07 took 180.8 min (2026-12-06; probe 14.4, GRPO
    # 50.6 at 152 s/step, checkpoint 11.0 min); 10 steps, 64 candidates (51 of 128 were learnable) and 1 rollout
    # give ~138 min for 05-07 by those cell times, ~146 with 01-04. Measured since: the whole make pipeline took
    # 105.2 min on an Intel Xeon with AMX (results/bench/pipeline_cpu_long.json), and its 10 steps gave +0.034
    # (paired CI +0.003 ... +0.065), against +0.014 from the 20 steps of the EPYC run
    "grpo": {"NUM_GENERATIONS": 8, "MAX_STEPS": 10, "POOL_CANDIDATES": 64, "TEMPERATURE": 0.3, "MAX_CALLS": 10,
             "MAX_COMPLETION_LENGTH": 1536, "CURVE_K": 1, "LEARNING_RATE": 3e-5, "REDRAWS": 3},
    "evaluation": {"ABLATIONS": []},
})


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
    return profile


def defaults(profile: str, stage: str) -> dict[str, Any]:
    """All default parameters of ``stage`` under ``profile``."""
    check_profile(profile)
    if stage not in _BASE:
        raise ConfigError(f"unknown stage {stage!r}: known stages are {', '.join(sorted(_BASE))}")
    params = copy.deepcopy(_BASE[stage])
    params.update(copy.deepcopy(_OVERRIDES.get(profile, {}).get(stage, {})))
    return params


def resolve(profile: str, stage: str, **explicit: Any) -> dict[str, Any]:
    """Profile defaults for ``stage`` with every non-``None`` explicit value on top.

    Unknown parameter names raise, so a typo in a papermill ``-p`` is not ignored.
    """
    params = defaults(profile, stage)
    unknown = sorted(set(explicit) - set(params))
    if unknown:
        raise ConfigError(f"unknown parameter(s) for stage {stage!r}: {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(params))}")
    params.update({k: v for k, v in explicit.items() if v is not None})
    params["PROFILE"] = profile
    return params


def _kind(value: Any) -> tuple[type, ...] | None:
    """The types a parameter whose default is ``value`` accepts (None: any; numbers accept ints)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return (bool,)
    if isinstance(value, int):
        return (int,)
    if isinstance(value, float):
        return (int, float)
    if isinstance(value, str):
        return (str,)
    if isinstance(value, (list, tuple)):
        return (list, tuple)
    if isinstance(value, dict):
        return (dict,)
    return None


_KIND_NAMES = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
               tuple: "a list", dict: "a mapping"}


def check_value(stage: str, name: str, value: Any, default: Any) -> None:
    """Raise a one-line :class:`ConfigError` when ``value`` is not of the type of ``name``'s default
    (papermill passes ``-p N 5`` as an int and ``-p N abc`` as a string; bools are not integers), or is
    a negative number (every numeric parameter is a count, a rate, a share or a size)."""
    kinds = _kind(default)
    if value is None:
        return
    if kinds is not None:
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            want = " or ".join(dict.fromkeys(_KIND_NAMES[k] for k in kinds))
            raise ConfigError(f"parameter {name}={value!r} of stage {stage!r} must be {want} "
                              f"(the profile's default is {default!r}); None keeps the default")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        raise ConfigError(f"parameter {name}={value!r} of stage {stage!r} must be 0 or more "
                          f"(the profile's default is {default!r}); None keeps the default")


OFF = "off"  # `-p NAME off`: NAME set to None (skip / all / no limit), not to the profile's default

# parameters whose None has a documented meaning though no profile's default is None
_NULLABLE_EXTRA = ("SOLVER_MODEL",)  # None: no model solver in notebook 03's calibration


def nullable(stage: str) -> set[str]:
    """The parameters of ``stage`` that may be None (:data:`OFF`): None in some profile's defaults, or listed."""
    names = {k for k, v in _BASE[stage].items() if v is None}
    names |= {k for profile in PROFILES for k, v in defaults(profile, stage).items() if v is None}
    return names | {k for k in _NULLABLE_EXTRA if k in _BASE[stage]}


def resolve_cell(stage: str, namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The notebook's parameters, resolved: call it right after the imports as
    ``P = profiles.resolve_cell("grpo", globals())``.

    Reads ``PROFILE`` and every UPPER_CASE name of ``namespace`` (the ``parameters`` cell and what
    papermill injected): a name the stage does not know — e.g. ``-p N_SEED 5`` for ``N_SEEDS`` — is
    refused with the closest known names, a value of the wrong type names the parameter, the value
    and what is allowed, ``None`` keeps the profile's default (:func:`resolve`) and ``"off"`` sets a
    parameter that may be None to None (``-p SOLVER_MODEL off``: skip the solver). Module aliases
    (``A``, ``Q``) and private names are not parameters."""
    import difflib
    from types import ModuleType

    profile = check_profile(namespace.get("PROFILE", "cpu"))
    params = defaults(profile, stage)
    given = {k: v for k, v in namespace.items() if k.isupper() and not k.startswith("_") and k != "PROFILE"
             and not isinstance(v, ModuleType) and not callable(v)}
    for name in sorted(set(given) - set(params)):
        close = difflib.get_close_matches(name, list(params), n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else f"; known: {', '.join(sorted(params))}"
        raise ConfigError(f"unknown parameter {name}={given[name]!r} for notebook stage {stage!r}{hint}")
    off = {k for k, v in given.items() if isinstance(v, str) and v.strip().lower() == OFF}
    for name in sorted(off - nullable(stage)):
        raise ConfigError(f"parameter {name}={given[name]!r} of stage {stage!r}: {name} cannot be off; give a value, "
                          f"or None for the profile's default {params[name]!r}")
    for name, value in given.items():
        if name not in off:
            check_value(stage, name, value, params[name])
    return {**resolve(profile, stage, **{k: v for k, v in given.items() if k not in off}), **dict.fromkeys(off)}
