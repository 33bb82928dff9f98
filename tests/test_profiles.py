import pytest

from medkit import profiles
from medkit.errors import ConfigError


def test_profile_defaults_differ_where_they_should():
    smoke = profiles.resolve("smoke", "entity_mining")
    cpu = profiles.resolve("cpu", "entity_mining")
    assert smoke["MAX_PASSAGES"] == 4000 and cpu["MAX_PASSAGES"] is None
    assert smoke["PROFILE"] == "smoke" and cpu["BACKEND"] == "processes"


def test_explicit_values_override_and_none_keeps_default():
    p = profiles.resolve("cpu", "kg", HOPS=3, N_SEEDS=None)
    assert p["HOPS"] == 3 and p["N_SEEDS"] == profiles.defaults("cpu", "kg")["N_SEEDS"]


def test_resolve_returns_a_copy():
    p = profiles.resolve("cpu", "entity_mining")
    p["RARE_TYPES"].append("phenotype")
    assert "phenotype" not in profiles.resolve("cpu", "entity_mining")["RARE_TYPES"]


@pytest.mark.parametrize("bad", ["CPU", "tpu", ""])
def test_unknown_profile_is_a_clear_error(bad):
    with pytest.raises(ConfigError, match="unknown profile .* choose one of smoke, cpu, cpu_long, gpu"):
        profiles.resolve(bad, "kg")


def test_unknown_parameter_is_not_ignored():
    with pytest.raises(ConfigError, match="RARE_MAX_DFF"):
        profiles.resolve("cpu", "entity_mining", RARE_MAX_DFF=5)


def test_cpu_long_keeps_cpus_data_and_enlarges_training_and_evaluation():
    for stage in ("entity_mining", "kg", "questions", "trajectories"):  # the same data, so the same questions
        assert {k: v for k, v in profiles.resolve("cpu_long", stage).items() if k != "PROFILE"} == \
               {k: v for k, v in profiles.resolve("cpu", stage).items() if k != "PROFILE"}
    sft, cpu_sft = profiles.resolve("cpu_long", "sft"), profiles.resolve("cpu", "sft")
    # every held-out question (>= 150 on the cpu data) x >= 4 rollouts
    assert sft["N_TRAIN"] > cpu_sft["N_TRAIN"] and sft["EVAL_K"] >= 4
    assert sft["EVAL_QUESTIONS"] is None and sft["EVAL_MAX_HOPS"] is None
    assert sft["QUANTIZE"] == cpu_sft["QUANTIZE"] and sft["LEARNING_RATE"] == cpu_sft["LEARNING_RATE"]
    grpo, cpu_grpo = profiles.resolve("cpu_long", "grpo"), profiles.resolve("cpu", "grpo")
    assert grpo["NUM_GENERATIONS"] >= 8 and grpo["MICRO_BATCH"] == cpu_grpo["MICRO_BATCH"] == 1  # 2 held 8.4 GiB
    assert grpo["POOL_CANDIDATES"] > cpu_grpo["POOL_CANDIDATES"]  # a pool for every step and its redraws
    # cpu_long's GRPO samples its rollouts as notebook 05 evaluates
    assert grpo["TEMPERATURE"] == sft["EVAL_TEMPERATURE"] and grpo["MAX_CALLS"] == sft["EVAL_MAX_CALLS"]
    assert grpo["TURN_MAX_NEW_TOKENS"] == sft["EVAL_MAX_NEW_TOKENS"]


def test_resolve_cell_reads_the_cell_and_refuses_misspelt_or_mistyped_parameters():
    import types

    from medkit.errors import ConfigError

    cell = {"PROFILE": "smoke", "SEED": None, "N_SEEDS": 7, "HOPS": None, "A": types.ModuleType("agent"),
            "_private": 1, "lower": 2}
    P = profiles.resolve_cell("kg", cell)
    assert P["N_SEEDS"] == 7 and P["SEED"] == 13 and P["PROFILE"] == "smoke"
    with pytest.raises(ConfigError, match=r"unknown parameter N_SEED=5 for notebook stage 'kg'; did you mean N_SEEDS"):
        profiles.resolve_cell("kg", {**cell, "N_SEED": 5})
    with pytest.raises(ConfigError, match=r"parameter N_SEEDS='abc' of stage 'kg' must be an integer"):
        profiles.resolve_cell("kg", {**cell, "N_SEEDS": "abc"})
    with pytest.raises(ConfigError, match=r"must be an integer"):
        profiles.resolve_cell("kg", {**cell, "N_SEEDS": True})  # a bool is not a count
    with pytest.raises(ConfigError, match=r"HOPS=1.5 .* must be an integer"):
        profiles.resolve_cell("kg", {**cell, "HOPS": 1.5})
    assert profiles.resolve_cell("grpo", {"PROFILE": "cpu", "LEARNING_RATE": 1})["LEARNING_RATE"] == 1  # ints are numbers
    with pytest.raises(ConfigError, match="unknown profile"):
        profiles.resolve_cell("kg", {"PROFILE": "cpuu"})


@pytest.mark.parametrize("stage,notebook", [("entity_mining", "01"), ("kg", "02"), ("questions", "03"),
                                            ("trajectories", "04"), ("sft", "05"), ("grpo", "06"), ("evaluation", "07")])
def test_every_parameters_cell_lists_exactly_its_stages_parameters(stage, notebook):
    import papermill

    from medkit.pipeline import numbered_notebooks

    [path] = [p for p in numbered_notebooks() if p.name.startswith(notebook)]
    assert set(papermill.inspect_notebook(str(path))) == set(profiles.defaults("cpu", stage)) | {"PROFILE"}


def test_off_is_an_explicit_none_and_negative_numbers_are_refused():
    """`-p SOLVER_MODEL None` kept the profile's "local" (None keeps defaults); "off" means skip. A
    negative count is refused with the parameter named."""
    from medkit.errors import ConfigError

    assert profiles.resolve_cell("questions", {"PROFILE": "cpu", "SOLVER_MODEL": None})["SOLVER_MODEL"] == "local"
    assert profiles.resolve_cell("questions", {"PROFILE": "cpu", "SOLVER_MODEL": "off"})["SOLVER_MODEL"] is None
    assert profiles.resolve_cell("kg", {"PROFILE": "cpu", "N_SEEDS": "OFF"})["N_SEEDS"] is None  # None = all seeds
    assert profiles.resolve_cell("sft", {"PROFILE": "gpu", "QUANTIZE": "off"})["QUANTIZE"] is None  # plain LoRA
    with pytest.raises(ConfigError, match=r"parameter SEED='off' of stage 'kg': SEED cannot be off; give a value, "
                                          r"or None for the profile's default 13"):
        profiles.resolve_cell("kg", {"PROFILE": "cpu", "SEED": "off"})
    with pytest.raises(ConfigError, match=r"parameter N_SEEDS=-5 of stage 'kg' must be 0 or more"):
        profiles.resolve_cell("kg", {"PROFILE": "cpu", "N_SEEDS": -5})
    with pytest.raises(ConfigError, match=r"LEARNING_RATE=-0.001 .* must be 0 or more"):
        profiles.resolve_cell("grpo", {"PROFILE": "cpu", "LEARNING_RATE": -1e-3})
    assert "SOLVER_MODEL" in profiles.nullable("questions") and "SEED" not in profiles.nullable("questions")
