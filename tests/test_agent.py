"""The ReAct agent (medkit.agent): protocol rendering, the defensive parser, the loop's stop rules."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medkit import agent as A
from medkit.llm import Completion

CALL = '<think>Rank them.</think>\n<tool_call>\n{"name": "diagnose", "arguments": {"phenotypes": ["Angiokeratoma"]}}\n</tool_call>'


# ---------------------------------------------------------------- parser


def test_parse_a_tool_call_and_an_answer():
    t = A.parse_turn(CALL)
    assert t.think == "Rank them." and t.errors == [] and t.answer is None
    assert t.tool_calls == [{"name": "diagnose", "arguments": {"phenotypes": ["Angiokeratoma"]}}]
    a = A.parse_turn("<think>Done.</think>\n<answer> Hepatitis B </answer>")
    assert a.answer == "Hepatitis B" and a.tool_calls == [] and a.errors == []
    assert a.content == "<think>Done.</think>\n<answer>Hepatitis B</answer>"


@pytest.mark.parametrize("text, error", [
    ('<think>x</think><tool_call>{"name": "search", "arguments": {"query": "a"</tool_call>', "malformed tool-call JSON"),
    ("<think>x</think><tool_call>[1, 2]</tool_call>", "must be a JSON object"),
    ('<think>x</think><tool_call>{"arguments": {}}</tool_call>', "without a string 'name'"),
    ('<think>x</think><tool_call>{"name": "read", "arguments": [1]}</tool_call>', "'arguments' must be an object"),
    ('<think>x</think><tool_call>{"name": "read", "arguments": "{oops"}</tool_call>', "not valid JSON"),
    ("<think>x</think><tool_call>   </tool_call>", "empty <tool_call>"),
    ("<think>x</think><answer></answer>", "empty <answer>"),
    ("The answer is probably a statin.", "neither <tool_call> nor <answer>"),
    ("<think>x</think><tool_call>{}", "unclosed <tool_call>"),
    ("<think>x</think></answer>", "</answer> without <answer>"),
    ("<think>x</think><tool_response>fake</tool_response><answer>y</answer>", "wrote a <tool_response>"),
    ('<think>x</think><tool_call>{"name": "a", "arguments": {}}</tool_call><answer>y</answer>', "both a tool call and"),
    ('<think>x</think><tool_call>{"name": "a"}</tool_call><tool_call>{"name": "b"}</tool_call>', "2 tool calls"),
])
def test_format_errors_are_recorded_not_raised(text, error):
    t = A.parse_turn(text)
    assert any(error in e for e in t.errors), t.errors


def test_openai_style_string_arguments_and_parameters_key():
    t = A.parse_turn('<think>x</think><tool_call>{"name": "read", "arguments": "{\\"entity_id\\": \\"HP:1\\"}"}</tool_call>')
    assert t.tool_calls == [{"name": "read", "arguments": {"entity_id": "HP:1"}}] and t.errors == []
    t = A.parse_turn('<think>x</think><tool_call>{"name": "read", "parameters": {"entity_id": "HP:1"}}</tool_call>')
    assert t.tool_calls[0]["arguments"] == {"entity_id": "HP:1"}


def test_close_open_tag_restores_a_cut_stop_string():
    assert A.close_open_tag('<think>x</think><tool_call>{"name": "a"}') == '<think>x</think><tool_call>{"name": "a"}</tool_call>'
    assert A.close_open_tag("<think>x</think><answer>Fabry disease") == "<think>x</think><answer>Fabry disease</answer>"
    assert A.close_open_tag("<think>x</think>") == "<think>x</think>"


PIECES = st.sampled_from(["<think>", "</think>", "<tool_call>", "</tool_call>", "<answer>", "</answer>",
                          "<tool_response>", '{"name": "search", "arguments": {"query": "x"}}', '{"name": ', "{", "}",
                          "[", "]", '"', "\\", "\n", "null", "1e999", "\x00", "é", "Hepatitis B"])


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=400))
def test_parser_never_raises_on_arbitrary_text(text):
    t = A.parse_turn(text)
    assert isinstance(t.errors, list) and all(isinstance(c["arguments"], dict) for c in t.tool_calls)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(PIECES, st.text(max_size=8)), max_size=40))
def test_parser_never_raises_on_protocol_fragments(parts):
    t = A.parse_turn("".join(parts))
    assert all(isinstance(c["name"], str) and c["name"] for c in t.tool_calls)
    if not t.errors:  # a clean parse is a well-formed turn
        assert t.think is not None and (bool(t.tool_calls) != (t.answer is not None))


def test_parser_survives_deep_nesting_and_non_strings():
    assert A.parse_turn("<tool_call>" + "[" * 100_000 + "</tool_call>").errors
    assert A.parse_turn(None).errors and A.parse_turn(b"\xff").errors is not None


# ---------------------------------------------------------------- rendering: two views, one token stream


def test_text_view_equals_the_trl_template_view(toolbox, small_tokenizer):
    from trl.chat_template_utils import qwen2_5_training_chat_template

    schemas = A.tool_schemas(toolbox.tools())
    messages = [
        {"role": "system", "content": A.SYSTEM_PROMPT},
        {"role": "user", "content": "Which disorder presents with angiokeratoma and hypohidrosis?"},
        {"role": "assistant", "content": "<think>Rank diseases.</think>",
         "tool_calls": [{"type": "function", "function": {"name": "diagnose",
                                                          "arguments": {"phenotypes": ["Angiokeratoma", "Hypohidrosis"], "k": 3}}}]},
        {"role": "tool", "name": "diagnose", "content": toolbox.call("diagnose", {"phenotypes": ["Angiokeratoma", "Hypohidrosis"], "k": 3})},
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "read", "arguments": {"entity_id": "MONDO:0010526"}}}]},
        {"role": "tool", "name": "read", "content": "Fabry disease (MONDO:0010526) — disease"},
        {"role": "assistant", "content": "<think>Fabry disease fits.</think>\n<answer>Fabry disease</answer>"},
    ]
    trl_view = small_tokenizer.apply_chat_template(messages, tools=schemas, chat_template=qwen2_5_training_chat_template,
                                                   tokenize=False)
    text_view = small_tokenizer.apply_chat_template(A.to_text_messages(messages, schemas), tokenize=False)
    assert trl_view == text_view
    assert "<tool_response>\nFabry disease (MONDO:0010526)" in text_view and '"name": "diagnose"' in text_view
    assert all("return" not in s["function"] for s in schemas)  # Returns sections cost tokens, not shown


def test_the_compact_tool_list_is_the_tools_and_sits_in_the_prompt_both_views_share(toolbox, small_tokenizer):
    from trl.chat_template_utils import qwen2_5_training_chat_template

    # one definition: the system prompt's tool lines are the tools' signatures and first doc lines
    assert A.TOOLS_TEXT == A.compact_tools(toolbox.tools())
    assert A.SYSTEM_PROMPT.endswith(A.TOOLS_TEXT)
    for name in toolbox.TOOL_NAMES:
        assert f"- {name}(" in A.TOOLS_TEXT
    assert 'diagnose(phenotypes: list[str], k=2, within=""): Rank diseases' in A.TOOLS_TEXT

    def renamed(x: str, k: int = 3) -> str:
        """First line.

        Args:
            x: a.
            k: b.
        """
        return x

    assert A.compact_tools([renamed]).splitlines()[1] == "- renamed(x, k=3): First line."
    # SFT without the JSON schemas (tools "[]") renders what the agent sees with schemas=[]
    messages = [{"role": "system", "content": A.SYSTEM_PROMPT}, {"role": "user", "content": "Which disorder?"},
                {"role": "assistant", "content": "<think>Look it up.</think>",
                 "tool_calls": [{"type": "function", "function": {"name": "lookup", "arguments": {"name": "Fabry disease"}}}]},
                {"role": "tool", "name": "lookup", "content": toolbox.call("lookup", {"name": "Fabry disease"})},
                {"role": "assistant", "content": "<think>Found.</think>\n<answer>Fabry disease</answer>"}]
    trl_view = small_tokenizer.apply_chat_template(messages, tools=[], chat_template=qwen2_5_training_chat_template,
                                                   tokenize=False)
    agent_view = small_tokenizer.apply_chat_template(A.to_text_messages(messages, []), tokenize=False)
    assert trl_view == agent_view and A.TOOLS_TEXT in agent_view and "<tools>" not in agent_view
    n = len(small_tokenizer(A.TOOLS_TEXT, add_special_tokens=False)["input_ids"])
    full = len(small_tokenizer(A.tools_block(A.tool_schemas(toolbox.tools())), add_special_tokens=False)["input_ids"])
    assert n < full / 5, (n, full)  # 150 vs 835 tokens with the cpu tokenizer


def test_guidance_and_demo_are_for_the_model_only():
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    out = A.to_text_messages(msgs, None, guidance="Entity_A --is_a--> Target_Entity",
                             demo=[{"role": "user", "content": "demo Q"}, {"role": "assistant", "content": "demo A"}])
    assert out[0]["content"].startswith("S") and "Entity_A" in out[0]["content"]
    assert [m["content"] for m in out[1:]] == ["demo Q", "demo A", "Q"]
    assert msgs == [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]  # input untouched


# ---------------------------------------------------------------- the loop with a scripted backend and real tools


class Scripted:
    """A ChatBackend replaying fixed replies per question (by the question text); records prompts."""

    def __init__(self, replies: dict[str, list]):
        self.replies = {q: list(r) for q, r in replies.items()}
        self.seen: list[list[dict]] = []

    def generate(self, conversations, *, max_new_tokens, temperature=0.0, stop=None, seed=None):
        out = []
        for conv in conversations:
            self.seen.append(conv)
            question = next(m["content"] for m in conv if m["role"] == "user")
            reply = self.replies[question].pop(0)
            out.append(reply if isinstance(reply, Completion) else Completion(reply, 100, 20, "stop"))
        return out


def _call(tool, **arguments):  # what a backend returns when it stops at "</tool_call>"
    return f"<think>Call {tool}.</think>\n<tool_call>\n" + json.dumps({"name": tool, "arguments": arguments}) + "\n"


class SeedRecorder:
    """Calls ``lookup`` until its third turn, then answers; records (question, seed) for every row."""

    def __init__(self, answer_at: dict[str, int] | None = None):
        self.answer_at = answer_at or {}
        self.seeds: list[tuple[str, int]] = []

    def generate(self, conversations, *, max_new_tokens, temperature=0.0, stop=None, seed=None):
        out = []
        for conv, row_seed in zip(conversations, seed or [None] * len(conversations)):
            question = next(m["content"] for m in conv if m["role"] == "user")
            turn = sum(m["role"] == "assistant" for m in conv)
            self.seeds.append((question, row_seed))
            text = ("<think>Done.</think><answer>X" if turn >= self.answer_at.get(question, 2)
                    else _call("lookup", name=f"{question} {turn}"))
            out.append(Completion(text, 100, 20, "stop"))
        return out


def test_conversation_seed_is_a_function_of_seed_question_copy_and_turn() -> None:
    s = A.conversation_seed(13, "q1", 0, 2)
    assert s == A.conversation_seed(13, "q1", 0, 2) and 0 <= s < 2**31
    others = {A.conversation_seed(14, "q1", 0, 2), A.conversation_seed(13, "q2", 0, 2),
              A.conversation_seed(13, "q1", 1, 2), A.conversation_seed(13, "q1", 0, 3)}
    assert s not in others and len(others) == 4


def test_a_questions_seeds_do_not_depend_on_the_questions_beside_it(toolbox):
    cfg = A.AgentConfig(max_calls=5, temperature=1.0, seed=13)
    alone = SeedRecorder()
    A.run_agent(alone, toolbox, [{"id": "qa", "question": "A"}], config=cfg, schemas=[], progress=False)
    # beside two others, one of which finishes at its first turn (a batch position would shift after it)
    crowd = SeedRecorder(answer_at={"B": 0})
    A.run_agent(crowd, toolbox, [{"id": "qb", "question": "B"}, {"id": "qc", "question": "C"},
                                 {"id": "qa", "question": "A"}], config=cfg, schemas=[], progress=False)
    seeds_of = lambda rec, q: [s for question, s in rec.seeds if question == q]
    assert len(seeds_of(alone, "A")) == 3 and seeds_of(crowd, "A") == seeds_of(alone, "A")
    assert len(set(seeds_of(alone, "A"))) == 3                          # every turn its own seed
    # one question given twice (a GRPO group) gets two different draws
    twice = SeedRecorder()
    A.run_agent(twice, toolbox, [{"id": "qa", "question": "A"}] * 2, config=cfg, schemas=[], progress=False)
    first_turn = [s for _, s in twice.seeds[:2]]
    assert first_turn[0] == seeds_of(alone, "A")[0] and first_turn[0] != first_turn[1]
    # no seed in the config: none is passed
    none = SeedRecorder()
    A.run_agent(none, toolbox, [{"id": "qa", "question": "A"}], config=A.AgentConfig(max_calls=5), schemas=[],
                progress=False)
    assert {s for _, s in none.seeds} == {None}


def test_loop_runs_real_tools_and_stops_on_each_rule(toolbox):
    qs = [{"id": f"q{i}", "question": f"question {i}"} for i in range(7)]
    backend = Scripted({
        "question 0": [_call("diagnose", phenotypes=["Angiokeratoma", "Hypohidrosis"], k=3),
                       "<think>Fabry disease ranks first.</think>\n<answer>Fabry disease"],
        "question 1": [_call("lookup", name="Fabry disease")] * 3,
        "question 2": ["I think it is Fabry disease.", "Still prose."],
        "question 3": [_call("lookup", name=f"x{i}") for i in range(10)],
        "question 4": [Completion.failed("POST http://x/v1/chat/completions: connection refused")],
        "question 5": [_call("teleport", where="moon"), '<think>x</think><tool_call>{"name": "read", "arguments": {"entity_id": "MONDO:0010526"}</tool_call>',
                       "<think>Give up.</think><answer>unknown</answer>"],
        "question 6": [Completion(_call("lookup", name="GLA"), 9000, 10, "stop")],
    })
    cfg = A.AgentConfig(max_calls=4, token_budget=8192, max_new_tokens=64, max_repeated_calls=1)
    out = A.run_agent(backend, toolbox, qs, config=cfg, guidance={"q0": "Entity_A --has_phenotype--> Clue_1"},
                      progress=False)
    by = {t["question_id"]: t for t in out}
    q0 = by["q0"]
    assert q0["stop_reason"] == "answer" and q0["prediction"] == "Fabry disease" and q0["n_tool_calls"] == 1
    assert "MONDO:0010526" in q0["messages"][3]["content"] and q0["messages"][3]["role"] == "tool"
    assert q0["messages"][2]["tool_calls"][0]["function"]["arguments"]["phenotypes"] == ["Angiokeratoma", "Hypohidrosis"]
    q1 = by["q1"]  # the first repeat gets a reminder (a failed call), the second stops the run
    assert q1["stop_reason"] == "repeated_call" and q1["n_tool_calls"] == 2 and q1["n_model_calls"] == 3
    assert [e["error"] for e in q1["tool_errors"]] == [A.REPEATED_CALL]
    assert [m["content"] for m in q1["messages"] if m["role"] == "tool"][1:] == [A.REPEATED_CALL, A.REPEATED_CALL_STOP]
    assert by["q2"]["stop_reason"] == "format_errors" and by["q2"]["n_format_errors"] == 2
    assert by["q3"]["stop_reason"] == "max_calls" and by["q3"]["n_model_calls"] == 4
    assert by["q4"]["stop_reason"] == "backend_error" and "connection refused" in json.dumps(by["q4"]["format_errors"])
    q5 = by["q5"]
    assert q5["stop_reason"] == "answer" and q5["tool_errors"][0]["error"].startswith("Error: unknown tool")
    assert any("malformed tool-call JSON" in e for f in q5["format_errors"] for e in f["errors"])
    assert by["q6"]["stop_reason"] == "token_budget"
    # MTG: the guidance reached the model, never the stored trajectory
    assert any("Clue_1" in conv[0]["content"] for conv in backend.seen)
    assert not any("Clue_1" in json.dumps(t["messages"]) for t in out)


@pytest.mark.slow
def test_small_local_model_runs_the_loop_end_to_end(toolbox, smol_backend):
    q = {"id": "fabry", "question": "Which lysosomal storage disorder presents with angiokeratoma and hypohidrosis?"}
    (t,) = A.run_agent(smol_backend, toolbox, [q], config=A.AgentConfig(max_calls=2, max_new_tokens=24),
                       progress=False)
    assert t["n_model_calls"] >= 1 and t["stop_reason"] in A.STOP_REASONS
    assert t["messages"][:2] == [{"role": "system", "content": A.SYSTEM_PROMPT}, {"role": "user", "content": q["question"]}]
    assert t["n_tokens"] > 300  # the prompt carried the tool schemas


def test_a_dead_endpoint_is_recorded_and_the_run_goes_on(toolbox):
    from medkit.llm import OpenAICompatibleBackend

    dead = OpenAICompatibleBackend("http://127.0.0.1:9/v1", "teacher", timeout=2, max_retries=0, progress=False)
    qs = [{"id": "a", "question": "Which disorder presents with angiokeratoma?"}, {"id": "b", "question": "Name a gene."}]
    out = A.run_agent(dead, toolbox, qs, config=A.AgentConfig(max_calls=3), progress=False)
    assert [t["stop_reason"] for t in out] == ["backend_error", "backend_error"]
    assert all("127.0.0.1:9" in t["format_errors"][0]["errors"][0] for t in out)


def test_step_api_applies_each_rule_without_a_backend(toolbox):
    """The step functions run_agent and GRPO's rollouts share: one definition of the stop rules."""
    cfg = A.AgentConfig(max_calls=3, max_format_errors=2, token_budget=500, max_repeated_calls=1)
    s = A.new_state({"id": "q", "question": "Which enzyme?"})
    assert A.stop_before_call(s, cfg)
    A.take_turn(s, _call("lookup", name="GLA"), "stop", toolbox.call, cfg=cfg, n_tokens=120)
    assert s["stop_reason"] is None and s["n_tool_calls"] == 1 and s["messages"][-1]["role"] == "tool"
    A.take_turn(s, _call("lookup", name="GLA"), "stop", toolbox.call, cfg=cfg, n_tokens=200)
    assert s["stop_reason"] is None and s["messages"][-1]["content"] == A.REPEATED_CALL and A.stop_before_call(s, cfg)
    A.take_turn(s, _call("lookup", name="GLA"), "stop", toolbox.call, cfg=cfg, n_tokens=260)
    assert s["stop_reason"] == "repeated_call" and not A.stop_before_call(s, cfg)
    strict = A.AgentConfig(max_calls=3, max_repeated_calls=0)  # no reminder: the first repeat stops
    s = A.new_state({"id": "q", "question": "Which enzyme?"})
    for _ in range(2):
        A.take_turn(s, _call("lookup", name="GLA"), "stop", toolbox.call, cfg=strict)
    assert s["stop_reason"] == "repeated_call" and s["n_tool_calls"] == 1 and not s["tool_errors"]

    s = A.new_state({"id": "q", "question": "Which enzyme?"})
    A.take_turn(s, "prose", "length", toolbox.call, cfg=cfg)
    assert s["format_errors"][-1]["errors"][-1] == "reply cut at max_new_tokens" and A.stop_before_call(s, cfg)
    A.take_turn(s, "more prose", "stop", toolbox.call, cfg=cfg)
    assert not A.stop_before_call(s, cfg) and s["stop_reason"] == "format_errors"

    s = A.new_state({"id": "q", "question": "Which enzyme?"})
    A.take_turn(s, _call("lookup", name="GLA"), "stop", toolbox.call, cfg=cfg, n_tokens=501)
    assert s["stop_reason"] == "token_budget"

    s = A.new_state({"id": "q", "question": "Which enzyme?"})
    for name in ("a", "b", "c"):
        A.take_turn(s, _call("lookup", name=name), "stop", toolbox.call, cfg=cfg)
    assert not A.stop_before_call(s, cfg) and s["stop_reason"] == "max_calls"
    done = A.finish_state(s)
    assert done["n_format_errors"] == 0 and not [k for k in done if k.startswith("_")]
    json.dumps(done)  # what is stored is plain JSON


def test_nested_unclosed_tags_parse_like_before_and_in_one_pass():
    """Each unclosed tag is reported once and the closed block still found; a 400 KB reply of nested
    unclosed tags (once 3.7 s: quadratic) is parsed with the same answer as a short one."""
    turn = A.parse_turn("<think>a<think>b</think><answer>x</answer>")
    assert turn.think == "b" and turn.answer == "x" and turn.errors.count("unclosed <think>") == 1
    big = A.parse_turn("<think>" * 57_000 + "b</think><answer>x</answer>")
    assert big.think == "b" and big.answer == "x" and big.errors.count("unclosed <think>") == 56_999


def test_a_tool_name_cannot_break_the_rendered_call():
    text = A.render_tool_call('x", "arguments": {"evil": 1}, "y": "', {"a": 1})
    call, err = A.parse_tool_call(text.removeprefix("<tool_call>").removesuffix("</tool_call>"))
    assert err is None and call == {"name": 'x", "arguments": {"evil": 1}, "y": "', "arguments": {"a": 1}}
    assert A.render_tool_call("common", {"relation": "is_a"}) == \
        '<tool_call>\n{"name": "common", "arguments": {"relation": "is_a"}}\n</tool_call>'
