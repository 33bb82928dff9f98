"""Tests of medkit.llm: the local transformers backend, the OpenAI-compatible endpoint backend, configs.

The local backend is checked on a tiny random Llama (2 layers, hidden 64) with the real SmolLM2
tokenizer and chat template, plus one short reply of the real SmolLM2-135M-Instruct. The endpoint
backend talks to a small HTTP server on 127.0.0.1 started here (canned replies, HTTP 500, garbage,
a server slower than the timeout) and to a closed port.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from medkit import llm
from medkit.errors import ConfigError, InputError
from medkit.model import ensure_small_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CONVERSATIONS = [
    [{"role": "user", "content": "Hi."}],
    [{"role": "system", "content": "You are a careful clinician answering briefly."},
     {"role": "user", "content": "Which gene is most often mutated in cystic fibrosis, and what does the "
                                 "protein it encodes normally do in epithelial cells?"}],
    [{"role": "user", "content": "Define anaemia in adults, briefly."}],
    [{"role": "user", "content": "List three rare diseases that affect the liver, with one sentence each "
                                 "on how they are diagnosed, treated and followed up over many years."}],
    [{"role": "user", "content": "What is a kinase?"},
     {"role": "assistant", "content": "An enzyme that adds phosphate groups."},
     {"role": "user", "content": "Give one example, please."}],
]

# --------------------------------------------------------------------------- tiny local model


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """These models are tiny; one thread keeps the timings steady when other work shares the 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



def tiny_backend(model, tokenizer, batch_size: int) -> llm.LocalTransformersBackend:
    return llm.LocalTransformersBackend(model, tokenizer, batch_size=batch_size, progress=False)


def test_local_backend_satisfies_protocol(tiny_model, tokenizer) -> None:
    backend = tiny_backend(tiny_model, tokenizer, 2)
    assert isinstance(backend, llm.ChatBackend)
    assert backend.name == "local:LlamaForCausalLM"


def test_batched_greedy_equals_unbatched_in_input_order(tiny_model, tokenizer) -> None:
    one_by_one = [tiny_backend(tiny_model, tokenizer, 1).generate([c], max_new_tokens=10)[0]
                  for c in CONVERSATIONS]
    lengths = {c.n_prompt_tokens for c in one_by_one}
    assert len(lengths) == len(CONVERSATIONS), "the conversations must differ in length to exercise padding"
    assert len({c.text for c in one_by_one}) == len(CONVERSATIONS), "distinct replies make the order check real"
    for batch_size in (1, 2, 8):
        batched = tiny_backend(tiny_model, tokenizer, batch_size).generate(CONVERSATIONS, max_new_tokens=10)
        assert batched == one_by_one, f"batch_size={batch_size}"
    prompt = tokenizer.apply_chat_template(CONVERSATIONS[1], add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert one_by_one[1].n_prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def test_max_new_tokens_respected(tiny_model, tokenizer) -> None:
    for n in (1, 7):
        out = tiny_backend(tiny_model, tokenizer, 3).generate(CONVERSATIONS, max_new_tokens=n)
        assert len(out) == len(CONVERSATIONS)
        for c in out:
            assert 1 <= c.n_completion_tokens <= n
            assert c.finish_reason == "length" or c.n_completion_tokens < n
            assert len(tokenizer(c.text, add_special_tokens=False)["input_ids"]) <= n + 1


def test_stop_strings_truncate_the_text(tiny_model, tokenizer) -> None:
    backend = tiny_backend(tiny_model, tokenizer, 2)
    free = backend.generate(CONVERSATIONS, max_new_tokens=16)
    target = free[3]
    assert target.finish_reason == "length" and len(target.text) > 20
    stop = target.text[len(target.text) // 2:len(target.text) // 2 + 4]
    expected = target.text[:target.text.find(stop)]
    stopped = backend.generate(CONVERSATIONS, max_new_tokens=16, stop=[stop, "\x00never\x00"])
    assert stopped[3].text == expected
    assert stop not in stopped[3].text
    assert stopped[3].finish_reason == "stop"
    assert stopped[3].n_completion_tokens < 16
    for before, after in zip(free, stopped):  # replies without the stop string are untouched
        if stop not in before.text:
            assert after == before
        else:
            assert after.text == before.text[:before.text.find(stop)] and after.finish_reason == "stop"


def test_sampling_is_reproducible_with_a_seed_and_leaves_global_rng_alone(tiny_model, tokenizer) -> None:
    backend = tiny_backend(tiny_model, tokenizer, 2)
    state = torch.get_rng_state()
    a = backend.generate(CONVERSATIONS, max_new_tokens=12, temperature=1.0, seed=11)
    assert torch.equal(torch.get_rng_state(), state), "the caller's RNG state must not move"
    b = backend.generate(CONVERSATIONS, max_new_tokens=12, temperature=1.0, seed=11)
    c = backend.generate(CONVERSATIONS, max_new_tokens=12, temperature=1.0, seed=12)
    greedy = backend.generate(CONVERSATIONS, max_new_tokens=12)
    assert a == b
    assert [x.text for x in a] != [x.text for x in c]
    assert [x.text for x in a] != [x.text for x in greedy]
    assert backend.generate(CONVERSATIONS, max_new_tokens=12, seed=99) == greedy  # greedy ignores the seed


def test_tokenizer_and_model_state_restored(tiny_model) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ensure_small_model()))
    tok.pad_token = None
    assert tok.padding_side == "right"
    tiny_model.train()
    try:
        out = tiny_backend(tiny_model, tok, 4).generate(CONVERSATIONS, max_new_tokens=3)
        assert tiny_model.training, "a model that was training goes back to train mode"
    finally:
        tiny_model.eval()
    assert all(c.ok for c in out)
    assert tok.pad_token is None and tok.padding_side == "right"


def test_finish_row_eos_padding_and_stop() -> None:
    words = {1: "a", 2: "<eos>", 3: " stop", 4: "b", 9: "<pad>"}

    def decode(ids: list[int]) -> str:
        return "".join(words[i] for i in ids if i not in (2, 9))

    c = llm.finish_row([1, 4, 2, 2, 2], n_prompt_tokens=5, eos_ids={2}, stop=[], decode=decode)
    assert (c.text, c.n_completion_tokens, c.finish_reason) == ("ab", 3, "stop")
    c = llm.finish_row([1, 3, 4, 9, 9], n_prompt_tokens=5, eos_ids={2}, stop=["sto"], decode=decode)
    assert (c.text, c.n_completion_tokens, c.finish_reason) == ("a ", 2, "stop")
    c = llm.finish_row([1, 4, 1], n_prompt_tokens=5, eos_ids={2}, stop=["zzz"], decode=decode)
    assert (c.text, c.n_completion_tokens, c.finish_reason) == ("aba", 3, "length")
    c = llm.finish_row([1, 4, 4, 9, 9], n_prompt_tokens=5, eos_ids={2}, stop=["zzz"], decode=decode, pad_id=9)
    assert (c.text, c.n_completion_tokens, c.finish_reason) == ("abb", 3, "stop")  # padding: finished, not counted
    c = llm.finish_row([1, 2, 3], n_prompt_tokens=5, eos_ids={2}, stop=["stop"], decode=decode)
    assert (c.text, c.n_completion_tokens, c.finish_reason) == ("a", 2, "stop")  # stop text after EOS is ignored


def test_bad_input_is_rejected(tiny_model, tokenizer) -> None:
    backend = tiny_backend(tiny_model, tokenizer, 2)
    with pytest.raises(InputError, match="conversation 1"):
        backend.generate([CONVERSATIONS[0], [{"content": "no role"}]], max_new_tokens=2)
    with pytest.raises(InputError, match="conversation 0"):
        backend.generate([[]], max_new_tokens=2)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        backend.generate(CONVERSATIONS, max_new_tokens=0)
    with pytest.raises(ConfigError, match="temperature"):
        backend.generate(CONVERSATIONS, max_new_tokens=2, temperature=-1)
    with pytest.raises(ConfigError, match="batch_size"):
        llm.LocalTransformersBackend(tiny_model, tokenizer, batch_size=0)
    assert backend.generate([], max_new_tokens=2) == []


def test_truncate_at_stop() -> None:
    assert llm.truncate_at_stop("abc STOP def END", ["END", "STOP"]) == ("abc ", True)
    assert llm.truncate_at_stop("abc", ["x"]) == ("abc", False)
    assert llm.truncate_at_stop("abc", []) == ("abc", False)


# --------------------------------------------------------------------------- the real small model


def test_smollm2_short_greedy_reply(smol_backend) -> None:
    question = [{"role": "user", "content": "What is 2+2?"}]
    [reply] = smol_backend.generate([question], max_new_tokens=16)
    assert smol_backend.name == "local:cpu"
    assert reply.ok and reply.error is None
    assert reply.text.strip(), "an instruct model answers with some text"
    assert "<|im_end|>" not in reply.text and "<|im_start|>" not in reply.text
    assert 0 < reply.n_completion_tokens <= 16 and reply.n_prompt_tokens > 10


# --------------------------------------------------------------------------- OpenAI-compatible endpoint

API_KEY = "sk-test-SECRET-0123456789"


class _Handler(BaseHTTPRequestHandler):
    """Behaviour chosen by the first path segment: /ok, /fail500, /garbage, /shape, /slow, /flaky."""

    server: _Server

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass

    def do_GET(self) -> None:
        mode = self.path.strip("/").split("/")[0]
        if mode == "ok" and self.path.endswith("/models"):
            self._send(200, json.dumps({"object": "list", "data": [{"id": "tiny-chat"}]}).encode())
        else:
            self._send(404, b'{"error": "not found"}')

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        mode = self.path.strip("/").split("/")[0]
        with self.server.lock:
            self.server.requests.append({"path": self.path, "body": body,
                                         "authorization": self.headers.get("Authorization")})
            n_mode = sum(1 for r in self.server.requests if r["path"].startswith(f"/{mode}/"))
        if mode == "fail500" or (mode == "flaky" and n_mode == 1):
            self._send(500, b'{"error": {"message": "engine crashed"}}')
        elif mode == "garbage":
            self._send(200, b"<html>this is not json{", "text/html")
        elif mode == "shape":
            self._send(200, b'{"id": "x", "object": "chat.completion"}')
        elif mode == "slow":
            time.sleep(1.5)
            self._send(200, b"{}")
        else:
            last = body["messages"][-1]["content"]
            reply = f"echo {last} STOP tail" if "say stop" in last else f"echo {last}"
            self._send(200, json.dumps({
                "id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                             "finish_reason": "length" if body["max_tokens"] <= 3 else "stop"}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
            }).encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    requests: list[dict]
    lock: threading.Lock


@pytest.fixture(scope="module")
def server():
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.requests, srv.lock = [], threading.Lock()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def base(server, mode: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/{mode}/v1"


def requests_for(server, mode: str) -> list[dict]:
    with server.lock:
        return [r for r in server.requests if r["path"].startswith(f"/{mode}/")]


def endpoint(url: str, **kwargs) -> llm.OpenAICompatibleBackend:
    kwargs = {"api_key": API_KEY, "timeout": 5, "max_retries": 0, "retry_backoff": 0.01, "progress": False,
              "slow_after": 30, **kwargs}
    return llm.OpenAICompatibleBackend(url, "tiny-chat", **kwargs)


@pytest.fixture()
def dead_url() -> str:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/v1"


def assert_all_errors(out: list[llm.Completion], n: int, *needles: str) -> None:
    assert len(out) == n
    for c in out:
        assert c.finish_reason == "error" and not c.ok and c.text == ""
        assert c.error and all(s in c.error for s in needles), c.error
        assert API_KEY not in c.error


def test_endpoint_happy_path_sends_the_request_fields(server) -> None:
    backend = endpoint(base(server, "ok"), concurrency=3)
    assert isinstance(backend, llm.ChatBackend)
    convs = [[{"role": "user", "content": f"question {i}"}] for i in range(6)]
    out = backend.generate(convs, max_new_tokens=32, temperature=0.7, stop=["END", "###"], seed=5)
    assert [c.text for c in out] == [f"echo question {i}" for i in range(6)]  # order kept under concurrency
    assert all(c.finish_reason == "stop" and c.n_prompt_tokens == 11 and c.n_completion_tokens == 5 for c in out)
    sent = requests_for(server, "ok")
    assert len(sent) == 6
    body = sent[0]["body"]
    assert body["model"] == "tiny-chat"
    assert body["messages"] in convs
    assert body["max_tokens"] == 32 and body["temperature"] == 0.7
    assert body["stop"] == ["END", "###"]
    # each request carries its row's seed (seed + i), whatever order the concurrent requests arrived in
    assert sorted((r["body"]["messages"][0]["content"], r["body"]["seed"]) for r in sent) == [
        (f"question {i}", 5 + i) for i in range(6)]
    assert sent[0]["authorization"] == f"Bearer {API_KEY}"
    assert API_KEY not in repr(backend)


def test_endpoint_sends_one_seed_per_row_when_given_them(server) -> None:
    backend = endpoint(base(server, "ok"))
    convs = [[{"role": "user", "content": f"row {i}"}] for i in range(3)]
    backend.generate(convs, max_new_tokens=4, temperature=1.0, seed=[70, 3, 911])
    sent = requests_for(server, "ok")[-3:]
    assert sorted((r["body"]["messages"][0]["content"], r["body"]["seed"]) for r in sent) == [
        ("row 0", 70), ("row 1", 3), ("row 2", 911)]
    with pytest.raises(ConfigError, match="one int per row"):
        backend.generate(convs, max_new_tokens=4, temperature=1.0, seed=[1, 2])


def test_row_seeds_and_call_seed() -> None:
    assert llm.row_seeds(None, 2) == [None, None]
    assert llm.row_seeds(5, 3) == [5, 6, 7]
    assert llm.row_seeds((9, 1), 2) == [9, 1]
    for bad in ([1], [1, "2"], [1, True], True):
        with pytest.raises(ConfigError, match="seed"):
            llm.row_seeds(bad, 2)
    assert llm.call_seed(None) is None and llm.call_seed(7) == 7
    folded = llm.call_seed([4, 5, 6])
    assert folded == llm.call_seed((4, 5, 6)) and 0 <= folded < 2**31  # stable, and a valid engine seed
    assert folded != llm.call_seed([4, 5, 7]) and folded != llm.call_seed([5, 4, 6])


def test_endpoint_length_and_client_side_stop(server) -> None:
    backend = endpoint(base(server, "ok"))
    [short] = backend.generate([[{"role": "user", "content": "hi"}]], max_new_tokens=3)
    assert short.finish_reason == "length"
    [cut] = backend.generate([[{"role": "user", "content": "please say stop"}]], max_new_tokens=20, stop=["STOP"])
    assert cut.text == "echo please say stop " and cut.finish_reason == "stop"
    body = requests_for(server, "ok")[-1]["body"]
    assert "seed" not in body and body["temperature"] == 0.0


def test_endpoint_http_500_is_retried_then_reported(server) -> None:
    url = base(server, "fail500")
    out = endpoint(url, max_retries=1, max_consecutive_failures=0).generate(
        [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]], max_new_tokens=4)
    assert_all_errors(out, 2, f"{url}/chat/completions", "HTTP 500", "engine crashed", "after 2 attempts")
    assert len(requests_for(server, "fail500")) == 4


def test_endpoint_transient_500_recovers_with_a_retry(server) -> None:
    [c] = endpoint(base(server, "flaky"), max_retries=2).generate([[{"role": "user", "content": "x"}]],
                                                                  max_new_tokens=8)
    assert c.ok and c.text == "echo x"
    assert len(requests_for(server, "flaky")) == 2


def test_endpoint_garbage_and_wrong_shape(server) -> None:
    convs = [[{"role": "user", "content": "a"}]]
    out = endpoint(base(server, "garbage"), max_retries=2).generate(convs, max_new_tokens=4)
    assert_all_errors(out, 1, base(server, "garbage"), "not valid JSON", "<html>")
    assert len(requests_for(server, "garbage")) == 1  # malformed JSON is not retried
    out = endpoint(base(server, "shape")).generate(convs, max_new_tokens=4)
    assert_all_errors(out, 1, base(server, "shape"), "malformed response", "choices")


def test_endpoint_timeout(server) -> None:
    t0 = time.perf_counter()
    out = endpoint(base(server, "slow"), timeout=0.3).generate([[{"role": "user", "content": "a"}]],
                                                               max_new_tokens=4)
    assert time.perf_counter() - t0 < 1.4
    assert_all_errors(out, 1, base(server, "slow"), "timed out after 0.3 s")


def test_a_slow_endpoint_is_said_to_be_slow_once(server) -> None:
    """A request that takes long warns once (it used to wait out its 60 s timeout without a word)."""
    backend = endpoint(base(server, "slow"), timeout=5, slow_after=0.2)
    with pytest.warns(RuntimeWarning, match=r"/slow/v1/chat/completions: no answer after 0.2 s; waiting up to 5 s "
                                            r"per attempt, 1 attempts"):
        backend.generate([[{"role": "user", "content": "a"}]], max_new_tokens=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second slow request: no second message
        backend.generate([[{"role": "user", "content": "b"}]], max_new_tokens=4)
    fast = endpoint(base(server, "ok"), slow_after=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fast.generate([[{"role": "user", "content": "c"}]], max_new_tokens=4)[0].ok
    assert llm.OpenAICompatibleBackend(base(server, "ok"), "tiny-chat").slow_after == 15.0  # the default: min(15, timeout / 2)


def test_endpoint_unreachable_fails_fast_without_raising(dead_url) -> None:
    convs = [[{"role": "user", "content": str(i)}] for i in range(5)]
    out = endpoint(dead_url, max_retries=1, max_consecutive_failures=2).generate(convs, max_new_tokens=4)
    assert_all_errors(out, 5, f"{dead_url}/chat/completions")
    assert all("unreachable" in c.error and "after 2 attempts" in c.error for c in out[:2])
    assert all("not sent" in c.error for c in out[2:])


def test_endpoint_check(server, dead_url) -> None:
    ok, msg = endpoint(base(server, "ok")).check()
    assert ok and "tiny-chat" in msg
    ok, msg = llm.OpenAICompatibleBackend(base(server, "ok"), "other-model", timeout=5).check()
    assert not ok and "'other-model' is not served" in msg and "tiny-chat" in msg
    ok, msg = endpoint(dead_url).check()
    assert not ok and dead_url in msg and "unreachable" in msg and API_KEY not in msg
    ok, msg = endpoint(base(server, "fail500")).check()  # no /models route: falls back to a 1-token chat
    assert not ok and "HTTP 500" in msg


# --------------------------------------------------------------------------- configuration


def test_backend_from_config_openai_reads_the_key_from_env(server, monkeypatch) -> None:
    monkeypatch.setenv("MEDKIT_TEST_KEY", API_KEY)
    backend = llm.backend_from_config({"type": "openai", "base_url": base(server, "ok"), "model": "tiny-chat",
                                       "api_key_env": "MEDKIT_TEST_KEY", "timeout": 5, "progress": False,
                                       "max_retries": 1, "concurrency": 2, "name": "endpoint"})
    assert isinstance(backend, llm.OpenAICompatibleBackend)
    assert (backend.timeout, backend.max_retries, backend.concurrency, backend.name) == (5, 1, 2, "endpoint")
    [c] = backend.generate([[{"role": "user", "content": "key?"}]], max_new_tokens=4)
    assert c.ok
    assert requests_for(server, "ok")[-1]["authorization"] == f"Bearer {API_KEY}"
    assert API_KEY not in repr(backend)


def test_backend_from_config_errors(monkeypatch) -> None:
    monkeypatch.delenv("MEDKIT_TEST_MISSING", raising=False)
    with pytest.raises(ConfigError, match="MEDKIT_TEST_MISSING"):
        llm.backend_from_config({"type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m",
                                 "api_key_env": "MEDKIT_TEST_MISSING"})
    with pytest.raises(ConfigError, match="local.*openai"):
        llm.backend_from_config({"type": "vllm"})
    with pytest.raises(ConfigError, match="local.*openai"):
        llm.backend_from_config("sglang:foo")
    with pytest.raises(ConfigError, match="unknown profile 'tpu'"):
        llm.backend_from_config("local:tpu")
    with pytest.raises(ConfigError, match="needs base_url"):
        llm.backend_from_config({"type": "openai", "model": "m"})
    with pytest.raises(ConfigError, match="'api_key'.*allowed"):
        llm.backend_from_config({"type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m",
                                 "api_key": "inline"})
    with pytest.raises(ConfigError, match="http"):
        llm.OpenAICompatibleBackend("127.0.0.1:8000", "m")


def test_backend_from_config_local_profile(smol_backend) -> None:
    assert llm.parse_backend_spec("local") == {"type": "local", "profile": "cpu"}
    assert llm.parse_backend_spec("local:smoke") == {"type": "local", "profile": "smoke"}
    backend = llm.backend_from_config({"type": "local", "profile": "smoke", "batch_size": 2, "progress": False,
                                       "engine": "transformers"})
    assert isinstance(backend, llm.LocalTransformersBackend)
    assert backend.name == "local:smoke" and backend.batch_size == 2
    assert backend.model.config.num_hidden_layers == smol_backend.model.config.num_hidden_layers
