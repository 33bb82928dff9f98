"""GRPO (medkit.grpo): token-level rollouts, the tool-token mask, reward functions, a real TRL step."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from medkit import agent as A
from medkit import grpo as G
from medkit import profiles
from medkit import rewards as R
from medkit.errors import ConfigError, InputError

RECORD = {"id": "q-fabry", "question": "Which lysosomal disease shows angiokeratomas and acroparesthesia?",
          "answer": "Fabry disease", "answer_id": "MONDO:0010526", "answer_aliases": ["Anderson-Fabry disease"]}
CALL = ('<think>I search the knowledge base.</think>\n<tool_call>\n{"name": "search", "arguments": '
        '{"query": "Fabry disease angiokeratoma"}}\n</tool_call>')
ANSWER = "<think>The search shows it.</think>\n<answer>Fabry disease</answer>"


class ScriptedModel:
    """Stands in for a causal LM: ``generate`` appends the next scripted token ids to every row."""

    def __init__(self, turns: list[list[int]], eos_id: int) -> None:
        import torch

        self.turns, self.calls, self.device = turns, 0, torch.device("cpu")
        self.generation_config = SimpleNamespace(eos_token_id=eos_id)
        self.seen_inputs: list[list[int]] = []

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, **_):
        import torch

        ids = self.turns[min(self.calls, len(self.turns) - 1)][:max_new_tokens]
        self.calls += 1
        rows = []
        for r in range(input_ids.shape[0]):
            self.seen_inputs.append([t for t, m in zip(input_ids[r].tolist(), attention_mask[r].tolist()) if m])
            rows.append(input_ids[r].tolist() + ids + [pad_token_id] * (max_new_tokens - len(ids)))
        return torch.tensor(rows)


def _odd_ids(tok, text: str) -> list[int]:
    """``text`` tokenised the way no tokenizer would: its closing tag spelled one character per token."""
    head, tag, tail = text.rpartition("</tool_call>") if "</tool_call>" in text else text.rpartition("</answer>")
    ids = tok(head, add_special_tokens=False)["input_ids"]
    for ch in tag + tail:
        ids += tok(ch, add_special_tokens=False)["input_ids"]
    return ids


def test_the_joins_are_the_chat_template(small_tokenizer):
    """Closing + continuation pieces rebuild exactly what the template renders for a whole conversation."""
    tok = small_tokenizer
    msgs = [{"role": "system", "content": A.SYSTEM_PROMPT}, {"role": "user", "content": RECORD["question"]},
            {"role": "assistant", "content": "<think>x</think>", "tool_calls": [
                {"type": "function", "function": {"name": "search", "arguments": {"query": "Fabry"}}}]},
            {"role": "tool", "name": "search", "content": "1. Fabry disease (MONDO:0010526): a lysosomal ..."},
            {"role": "assistant", "content": "no tags here"},
            {"role": "user", "content": "Error: no <think> block. Reply with ..."},
            {"role": "assistant", "content": ANSWER}]
    text = A.to_text_messages(msgs, [])
    expected = tok.apply_chat_template(text, tokenize=False)
    built = tok.apply_chat_template(text[:2], add_generation_prompt=True, tokenize=False)
    for i in (2, 4, 6):
        built += text[i]["content"]
        close, cont = G.turn_close_and_continuation(tok, text[i + 1:i + 2])
        built += close + cont
    assert built == expected
    assert G.text_messages_after_last_assistant(msgs[:4], []) == [text[3]]


@pytest.fixture()
def scripted(small_tokenizer, toolbox):
    tok = small_tokenizer
    eos = tok.convert_tokens_to_ids(tok.eos_token)
    turns = [_odd_ids(tok, CALL), _odd_ids(tok, ANSWER)]
    model = ScriptedModel(turns, eos)
    rollouts = G.AgentRollouts(toolbox, [RECORD], G.RolloutConfig(max_calls=4, max_new_tokens=96,
                                                                  max_completion_length=1800, temperature=0.7))
    [r] = rollouts.run(model, tok, [G.prompt_messages(RECORD, [])])
    return SimpleNamespace(tok=tok, eos=eos, turns=turns, model=model, rollout=r, rollouts=rollouts)


def test_rollout_trains_on_the_ids_the_policy_generated(scripted):
    tok, r, turns = scripted.tok, scripted.rollout, scripted.turns
    assert r.state["stop_reason"] == "answer" and r.state["prediction"] == "Fabry disease"
    assert r.turn_ids == turns  # every generated id kept, in order, nothing re-encoded
    assert r.completion_ids[:len(turns[0])] == turns[0]
    canonical = tok(tok.decode(turns[0]), add_special_tokens=False)["input_ids"]
    assert canonical != turns[0]  # re-tokenising would have changed the ids (the drift TRL issue 5144 is about)
    # the second turn's input is exactly prompt + the first turn's ids + closing + continuation
    second_input = scripted.model.seen_inputs[1]
    assert second_input[:len(r.prompt_ids)] == r.prompt_ids
    assert second_input[len(r.prompt_ids):] == r.completion_ids[:len(second_input) - len(r.prompt_ids)]
    assert r.completion_ids[-1] == scripted.eos  # the rollout ends its last turn: not counted as truncated


def test_tool_response_tokens_are_masked_and_nothing_else(scripted):
    tok, r = scripted.tok, scripted.rollout
    assert len(r.env_mask) == len(r.completion_ids)
    masked = tok.decode([t for t, m in zip(r.completion_ids, r.env_mask) if m == 0], skip_special_tokens=False)
    trained = tok.decode([t for t, m in zip(r.completion_ids, r.env_mask) if m == 1], skip_special_tokens=False)
    observation = next(m["content"] for m in r.state["messages"] if m["role"] == "tool")
    assert "Fabry" in observation and observation in masked and "<tool_response>" in masked
    assert "<tool_response>" not in trained and observation[:40] not in trained
    assert sum(r.env_mask) == sum(len(t) for t in r.turn_ids) + 2  # the policy's ids + the 2 turn-closing tokens


def test_rollout_renders_as_the_agent_conversation(scripted):
    """Decoded, the token stream is the chat template's rendering of the rollout (raw turn texts)."""
    tok, r = scripted.tok, scripted.rollout
    text = A.to_text_messages(r.state["messages"], [])
    raw = iter(r.turn_texts)
    text = [{**m, "content": next(raw)} if m["role"] == "assistant" else m for m in text]
    rendered = tok.apply_chat_template(text, tokenize=False)
    assert tok.decode(r.prompt_ids + r.completion_ids, skip_special_tokens=False) + "\n" == rendered  # the
    # template's newline after the very last turn is outside the completion


def test_a_rollout_that_hits_the_length_limit_stops_and_is_kept(small_tokenizer, toolbox):
    tok = small_tokenizer
    eos = tok.convert_tokens_to_ids(tok.eos_token)
    model = ScriptedModel([_odd_ids(tok, CALL)] * 2 + [tok("I keep talking " * 40, add_special_tokens=False)["input_ids"]],
                          eos)
    rollouts = G.AgentRollouts(toolbox, [RECORD], G.RolloutConfig(max_calls=6, max_new_tokens=64,
                                                                  max_completion_length=300, temperature=0.7))
    [r] = rollouts.run(model, tok, [G.prompt_messages(RECORD, [])])
    assert r.state["stop_reason"] in {"token_budget", "repeated_call"}
    assert len(r.completion_ids) <= 300 and len(r.env_mask) == len(r.completion_ids)


def _rollout(prediction, record=RECORD, n_tool_calls=1, tool_errors=()):
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
            {"role": "assistant", "content": "<think>.</think>", "tool_calls": [
                {"type": "function", "function": {"name": "search", "arguments": {"query": "x"}}}]},
            {"role": "tool", "name": "search", "content": "1. Fabry disease (MONDO:0010526)"},
            {"role": "assistant", "content": f"<think>.</think>\n<answer>{prediction}</answer>"}]
    return {"question_id": "q", "messages": msgs, "prediction": prediction, "stop_reason": "answer",
            "format_errors": [], "tool_errors": list(tool_errors), "n_model_calls": 2, "n_tool_calls": n_tool_calls,
            "n_format_errors": 0, "n_tokens": 900, "record": record}


def test_reward_functions_are_separate_logged_and_survive_a_broken_term():
    acc, pref, eff = G.reward_functions(call_budget=2, token_budget=1000)
    assert [f.__name__ for f in (acc, pref, eff)] == ["accuracy", "preference", "efficiency"]
    assert tuple(f.__name__ for f in (acc, pref, eff)) == R.TERMS      # the order RewardWeights.signed() pays
    rollouts = [_rollout("Fabry disease"), _rollout("Gaucher disease"), _rollout("Fabry disease", record=None),
                _rollout("Fabry disease", n_tool_calls=4)]
    logged: dict[str, float] = {}
    out = acc(rollout=rollouts, log_metric=logged.__setitem__)
    assert out == [1.0, 0.0, None, 1.0]  # a term that raises gives a missing value, not a crash
    assert logged["reward_errors/accuracy"] == 1.0
    assert pref(rollout=rollouts, log_metric=logged.__setitem__)[0] == pytest.approx(2 / 3, abs=1e-3)  # well-formed, grounded, not verified
    assert logged["tools/call_frequency"] == pytest.approx(7 / 4) and "preference/verified" in logged
    assert eff(rollout=rollouts)[:1] == [0.0] and eff(rollout=rollouts)[3] == pytest.approx(0.5)
    assert rollouts[0]["rewards"] == {"accuracy": 1.0, "preference": pytest.approx(2 / 3, abs=1e-3), "efficiency": 0.0}
    with pytest.raises(ConfigError, match="AgentRollouts"):
        acc(prompts=["p"], completions=["c"])


def test_gated_terms_reuse_the_accuracy_verdict(monkeypatch):
    calls = []
    judge = R.accuracy
    monkeypatch.setattr(R, "accuracy", lambda *a, **k: calls.append(1) or judge(*a, **k))
    acc, pref, eff = G.reward_functions(call_budget=2, token_budget=1000, gate=True)
    rollouts = [_rollout("Fabry disease"), _rollout("Gaucher disease")]
    for term in (acc, pref, eff):
        term(rollout=rollouts)
    assert len(calls) == 2  # once per rollout, not once per term
    # wrong answer: grounded and verified do not pay, only well-formedness (1 of 3 parts)
    assert rollouts[1]["rewards"]["preference"] == pytest.approx(1 / 3, abs=1e-3)
    assert rollouts[0]["rewards"]["preference"] > rollouts[1]["rewards"]["preference"]
    fresh = [_rollout("Gaucher disease")]
    assert pref(rollout=fresh) == [pytest.approx(1 / 3, abs=1e-3)] and len(calls) == 3  # no stored verdict: judged on demand


def test_grpo_config_from_the_profile():
    p = profiles.resolve("smoke", "grpo")
    cfg = G.grpo_config(p, "/tmp/unused-grpo", use_cpu=True)
    assert cfg.num_generations == 2 and cfg.per_device_train_batch_size == 2
    assert cfg.reward_weights == [1.0, 0.3, -0.2] and cfg.gradient_checkpointing is False
    assert G.grpo_config({**p, "GRADIENT_CHECKPOINTING": True}, "/tmp/unused-grpo", use_cpu=True).gradient_checkpointing
    with pytest.raises(ConfigError, match="NUM_GENERATIONS"):
        G.grpo_config({**p, "NUM_GENERATIONS": 1}, "/tmp/unused-grpo", use_cpu=True)
    # micro-batches: 2 questions x 8 rollouts in passes of 2, one generation batch per optimizer step
    micro = G.grpo_config({**p, "NUM_GENERATIONS": 8, "QUESTIONS_PER_STEP": 2, "MICRO_BATCH": 2}, "/tmp/unused-grpo",
                          use_cpu=True)
    assert (micro.per_device_train_batch_size, micro.gradient_accumulation_steps) == (2, 8)
    assert micro.generation_batch_size == 16 and micro.steps_per_generation == 8
    with pytest.raises(ConfigError, match="MICRO_BATCH"):
        G.grpo_config({**p, "NUM_GENERATIONS": 8, "MICRO_BATCH": 3}, "/tmp/unused-grpo", use_cpu=True)


def test_bad_questions_are_named():
    with pytest.raises(InputError, match="line 2.*answer"):
        G.prompt_dataset([RECORD, {"question": "q?", "answer": ""}], [])
    with pytest.raises(InputError, match="no questions"):
        G.prompt_dataset([], [])


def test_nan_loss_stops_training():
    cb = G.StopOnNaN()
    control = SimpleNamespace(should_training_stop=False)
    cb.on_log(None, None, control, logs={"loss": 0.3})
    assert not control.should_training_stop
    cb.on_log(None, None, control, logs={"loss": math.nan})
    assert control.should_training_stop and cb.seen_nan


@pytest.mark.notebook
def test_one_real_grpo_step_with_trl(tmp_path, toolbox):
    """(slow) SmolLM2 + a fresh LoRA adapter, one GRPOTrainer step over real tool-calling rollouts."""

    p = {**profiles.resolve("smoke", "grpo", MAX_STEPS=1, MAX_COMPLETION_LENGTH=96, TURN_MAX_NEW_TOKENS=24,
                            MAX_CALLS=2, QUANTIZE="none", BETA=0.04), "SAVE_STEPS": 1}
    model, tok, peft_config = G.load_policy("cpu", None, p)
    rollouts = G.AgentRollouts(toolbox, [RECORD], G.RolloutConfig(
        max_calls=2, max_new_tokens=24, max_completion_length=96, temperature=1.0, batch_size=4))
    trainer = G.build_trainer(model, tok, [RECORD], rollouts, p, tmp_path / "run", peft_config=peft_config)
    out = G.train(trainer)
    assert out["steps"] == 1 and len(rollouts.history) == 2  # one question x NUM_GENERATIONS
    logged = out["log"][-1]
    for key in ("rewards/accuracy/mean", "rewards/preference/mean", "rewards/efficiency/mean", "kl",
                "tools/call_frequency", "reward_errors/accuracy"):
        assert key in logged, key
    assert all(set(h["rewards"]) == {"accuracy", "preference", "efficiency"} for h in rollouts.history)
    [mem] = rollouts.memory  # one step: the process memory as its rollouts started
    assert mem["step"] == 0 and mem["rss_mb"] > 0 and mem["peak_rss_mb"] > 0  # kernel high-water mark: may lag rss
    assert (tmp_path / "run" / "checkpoint-1" / "adapter_model.safetensors").exists()
    again = G.train(G.build_trainer(*G.load_policy("cpu", None, p)[:2], [RECORD], rollouts, p, tmp_path / "run",
                                    peft_config=peft_config))
    assert again["already_finished"] and again["steps_this_run"] == 0  # a finished run is loaded, not retrained


def test_a_missing_sft_adapter_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="run notebook 05 first"):
        G.load_policy("cpu", tmp_path / "nowhere", profiles.resolve("cpu", "grpo"))


def test_training_questions_respect_the_hop_limit_and_the_seed():
    records = [{"id": str(i), "question": f"q{i}?", "answer": "a", "hops": 2 + i % 4} for i in range(40)]
    a = G.select_training_questions(records, 10, max_hops=3, seed=13)
    assert len(a) == 10 and all(r["hops"] <= 3 for r in a)
    assert a == G.select_training_questions(records, 10, max_hops=3, seed=13)
    assert a != G.select_training_questions(records, 10, max_hops=3, seed=14)


def test_no_schemas_means_every_tool_in_the_prompt_as_in_evaluation(toolbox):
    full = G.AgentRollouts(toolbox, [RECORD], schemas=None)
    bare = G.AgentRollouts(toolbox, [RECORD], schemas=[])
    assert [s["function"]["name"] for s in full.schemas] == [t.__name__ for t in toolbox.tools()]
    with_tools = G.prompt_dataset([RECORD], full.schemas)[0]["prompt"][0]["content"]
    assert "<tools>" in with_tools and "<tools>" not in G.prompt_dataset([RECORD], bare.schemas)[0]["prompt"][0]["content"]


def test_engine_rollouts_are_the_transformers_rollouts_token_for_token(small_tokenizer, toolbox, tmp_path):
    """Greedy, a CTranslate2 copy of the policy generates the same ids, masks and conversation."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from medkit import engine as EN

    pytest.importorskip("ctranslate2")
    tok = small_tokenizer
    import torch

    torch.manual_seed(11)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()
    cfg = G.RolloutConfig(max_calls=3, max_new_tokens=24, max_completion_length=400, temperature=0.0)
    prompts = [G.prompt_messages(RECORD, []), G.prompt_messages({**RECORD, "question": "Name a drug for gout."}, [])]
    want = G.AgentRollouts(toolbox, [RECORD], cfg).run(model, tok, prompts)
    engine = EN.CTranslate2Backend.load(EN.convert(model, tok, root=tmp_path), tok, progress=False)
    got = G.AgentRollouts(toolbox, [RECORD], cfg).run(model, tok, prompts, engine=engine)
    for a, b in zip(got, want):
        assert a.turn_ids == b.turn_ids and a.completion_ids == b.completion_ids and a.env_mask == b.env_mask
        assert a.state["stop_reason"] == b.state["stop_reason"] and a.state["messages"] == b.state["messages"]


def test_rollout_engine_choice():
    assert G.rollout_engine("transformers") == "transformers"
    assert G.rollout_engine("auto", use_cpu=False) == "transformers"   # a GPU run keeps the policy generating
    assert G.rollout_config({**profiles.resolve("smoke", "grpo"), "ENGINE": "transformers"}).engine == "transformers"
    with pytest.raises(ConfigError, match="unknown ENGINE"):
        G.rollout_engine("fast")
    with pytest.raises(ConfigError, match="export_dir"):
        G.AgentRollouts(None, [RECORD], G.RolloutConfig(engine="ctranslate2"), schemas=[])
    with pytest.raises(ConfigError, match="base_loader"):
        G.AgentRollouts(None, [RECORD], G.RolloutConfig(engine="auto"), schemas=[], export_dir="/tmp/unused")


def _heldout_rows(correct_by_question: dict[str, list[bool]]) -> list[dict]:
    return [{"question_id": q, "rollout": i, "correct": c, "stop_reason": "answer" if c else "max_calls"}
            for q, cs in correct_by_question.items() for i, c in enumerate(cs)]


def test_the_reward_hacking_check_flags_reward_up_while_heldout_accuracy_falls():
    qs = [f"q{i}" for i in range(20)]
    start = _heldout_rows({q: [True, True] if i < 10 else [False, False] for i, q in enumerate(qs)})
    worse = _heldout_rows({q: [False, False] for q in qs})
    same = _heldout_rows({q: [True, True] if i < 10 else [False, False] for i, q in enumerate(qs)})
    slightly = _heldout_rows({q: [True, True] if i < 9 else [False, False] for i, q in enumerate(qs)})
    rising = [{"step": s, "reward": 0.1 * s, "rewards/accuracy/mean": 0.0, "rollout/answer_rate": 0.2 * s}
              for s in range(1, 5)]
    falling = [{**h, "reward": 1.0 - 0.1 * h["step"]} for h in rising]
    hacked = G.reward_hacking_check(rising, [(0, start), (2, worse), (4, worse)])
    assert hacked["verdict"] == "hacking" and hacked["reward_change"] == pytest.approx(0.2)
    assert hacked["heldout_change"]["mean"] == -0.5 and hacked["heldout_change"]["worse"] == 10
    first, mid, last = hacked["checkpoints"]
    assert (first["step"], first["train_reward"], first["heldout_pass@1"]) == (0, None, 0.5)
    assert mid["train_reward"] == pytest.approx(0.15) and last["train_answer_rate"] == pytest.approx(0.7)
    assert last["heldout_answer_rate"] == 0.0
    assert G.reward_hacking_check(rising, [(0, start), (4, slightly)])["verdict"] == "suspect"
    assert G.reward_hacking_check(rising, [(0, start), (4, same)])["verdict"] == "none"
    assert G.reward_hacking_check(falling, [(0, start), (4, worse)])["verdict"] == "none"  # worse, but no hacking
    with pytest.raises(InputError, match="different question sets"):
        G.reward_hacking_check(rising, [(0, start), (4, worse[:-2])])
    with pytest.raises(ConfigError, match="step 0"):
        G.reward_hacking_check(rising, [(4, worse)])

    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    from medkit import plots

    fig = plots.reward_vs_heldout(pd.DataFrame(rising), pd.DataFrame(hacked["checkpoints"]), "check")
    reward_ax, heldout_ax = fig.axes[0], fig.axes[-1]
    assert list(reward_ax.lines[0].get_ydata()) == [h["reward"] for h in rising]
    assert list(heldout_ax.lines[0].get_xdata()) == [0, 2, 4]  # held-out pass@1 at the start and each checkpoint
    assert list(heldout_ax.lines[0].get_ydata()) == [0.5, 0.0, 0.0]


def test_history_frame_adds_the_weighted_total_and_the_curves_figure_draws_any_log() -> None:
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    from medkit import plots

    history = [{"step": 1, "stop_reason": "answer", "rewards": {"accuracy": 1.0, "preference": 0.5, "efficiency": 0.5}},
               {"step": 1, "stop_reason": "max_calls", "rewards": {"accuracy": 0.0, "preference": None}}]
    frame = G.history_frame(history, R.RewardWeights(1.0, 0.3, 0.2))
    assert list(frame["reward_total"]) == pytest.approx([1.0 + 0.15 - 0.1, 0.0])   # a missing term counts 0
    assert "reward_total" not in G.history_frame(history)
    assert G.history_frame([], R.RewardWeights()).empty

    log = pd.DataFrame({"step": [1, 2, 3], "reward": [0.1, 0.4, 0.5], "rewards/accuracy/mean": [0.0, 0.5, 0.5],
                        "kl": [0.0, 0.01, 0.02]})                                  # no preference parts, no loss
    fig = plots.grpo_curves(log)
    assert len(fig.axes) == 7                                                      # 6 panels + the loss axis
    terms_ax = fig.axes[0]
    assert [line.get_label() for line in terms_ax.lines] == ["accuracy", "preference", "efficiency"]
    assert list(terms_ax.lines[0].get_ydata()) == [0.0, 0.5, 0.5]
    assert all(math.isnan(y) for y in terms_ax.lines[1].get_ydata())                # absent metric: an empty line


OTHER = {"id": "q-marfan", "question": "Which fibrillin-1 disorder shows ectopia lentis and aortic root dilatation?",
         "answer": "Marfan syndrome", "answer_id": "MONDO:0007947", "answer_aliases": []}
WRONG = "<think>I guess.</think>\n<answer>Gaucher disease</answer>"


class RowScriptedModel(ScriptedModel):
    """Answers at once, row ``r`` of every batch with ``answers[r % len(answers)]``."""

    def __init__(self, tok, answers: list[str]) -> None:
        super().__init__([], tok.convert_tokens_to_ids(tok.eos_token))
        self.answers = [tok(a, add_special_tokens=False)["input_ids"] for a in answers]

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, **_):
        import torch

        self.calls += 1
        rows = []
        for r in range(input_ids.shape[0]):
            ids = self.answers[r % len(self.answers)][:max_new_tokens]
            rows.append(input_ids[r].tolist() + ids + [pad_token_id] * (max_new_tokens - len(ids)))
        return torch.tensor(rows)


def _group_run(tok, toolbox, answers, redraws):
    rollouts = G.AgentRollouts(toolbox, [RECORD, OTHER], G.RolloutConfig(max_calls=2, max_new_tokens=48,
                                                                         temperature=0.7, redraws=redraws), schemas=[])
    out = rollouts.run_groups(RowScriptedModel(tok, answers), tok, [G.prompt_messages(RECORD, [])] * 2, group_size=2)
    return rollouts, out


def test_dynamic_sampling_keeps_a_group_whose_rollouts_differ(small_tokenizer, toolbox):
    rollouts, out = _group_run(small_tokenizer, toolbox, [ANSWER, WRONG], redraws=3)
    assert [r.state["prediction"] for r in out] == ["Fabry disease", "Gaucher disease"]
    assert rollouts.sampling.summary() == {"groups": 1, "redrawn": 0, "uniform_kept": 0}


def test_dynamic_sampling_replaces_a_uniform_group_with_another_pool_question(small_tokenizer, toolbox):
    tok = small_tokenizer
    # every rollout answers Fabry disease: right on RECORD (uniform), wrong on OTHER (uniform too)
    rollouts, out = _group_run(tok, toolbox, [ANSWER], redraws=1)
    assert rollouts.sampling.summary() == {"groups": 1, "redrawn": 1, "uniform_kept": 1}
    assert [r.state["question"] for r in out] == [OTHER["question"]] * 2  # the replacement, not the original
    prompt = tok.decode(out[0].prompt_ids)
    assert OTHER["question"] in prompt and RECORD["question"] not in prompt  # the ids TRL trains on match it
    assert A.SYSTEM_PROMPT[:60] in prompt                                       # same system turn as TRL's prompt
    off, _ = _group_run(tok, toolbox, [ANSWER], redraws=0)
    assert off.sampling.summary() == {"groups": 1, "redrawn": 0, "uniform_kept": 1}


def test_dynamic_sampling_walks_a_seeded_shuffle_and_never_reuses_a_question_of_the_step():
    pool = [f"q{i}?" for i in range(5)]
    a, b = G.DynamicSampling(), G.DynamicSampling()
    picks = [a.next_question(pool, {"q0?"}, seed=13) for _ in range(8)]
    assert picks == [b.next_question(pool, {"q0?"}, seed=13) for _ in range(8)]
    assert "q0?" not in picks and set(picks) == set(pool) - {"q0?"}
    with pytest.raises(ConfigError, match="REDRAWS"):
        G.DynamicSampling().next_question(pool, set(pool), seed=13)
    with pytest.raises(ConfigError, match="groups of 3"):
        G.AgentRollouts(SimpleNamespace(), [RECORD], schemas=[]).run_groups(None, None, [[{"role": "user", "content": "q"}]] * 2,
                                                                           group_size=3)


def test_with_question_replaces_only_the_last_user_message():
    prompt = G.prompt_messages(RECORD, [])
    swapped = G.with_question(prompt, OTHER["question"])
    assert swapped[0] == prompt[0] and swapped[-1]["content"] == OTHER["question"] and prompt[-1]["content"] == RECORD["question"]
    with pytest.raises(InputError, match="no user message"):
        G.with_question([{"role": "system", "content": "s"}], "q")
