"""``python -m medkit eval-endpoint`` end to end on loopback: a fake OpenAI-compatible agent endpoint, a fake
SearXNG instance serving a page, a fake judge, and MedBrowseComp rows encoded as the authors publish them."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from medkit import cli
from medkit import medbrowsecomp as M

PAGE = """<html><head><title>NCT02294461 regimen</title></head><body><article><h1>Trial NCT02294461</h1>
<p>The more effective regimen of trial NCT02294461 combined enzalutamide with standard androgen deprivation;
enzalutamide (brand Xtandi) is the ingredient starting with E. The sponsor reported outcomes in 2019.</p>
<p>The comparator arm received placebo with androgen deprivation therapy alone.</p></article></body></html>"""


class Handler(BaseHTTPRequestHandler):
    auth: list[str | None] = []

    def log_message(self, *args):
        pass

    def _send(self, status, body, ctype="application/json"):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        port = self.server.server_address[1]
        if self.path.startswith("/searx/search"):
            return self._send(200, json.dumps({"results": [
                {"title": "NCT02294461 regimen", "url": f"http://127.0.0.1:{port}/page", "content": "enzalutamide ..."}]}))
        if self.path == "/page":
            return self._send(200, PAGE, "text/html; charset=utf-8")
        return self._send(404, "{}")

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Handler.auth.append(self.headers.get("Authorization"))
        msgs = body["messages"]
        if self.path.startswith("/judge/"):
            user = msgs[-1]["content"]
            response = re.search(r"Response: (.*)\n", user).group(1)
            gold = re.search(r"Reference answer: (.*)\n", user).group(1)
            value = M.final_value(response, "Ingredient")
            reply = json.dumps({"extracted_final_answer": value, "reasoning": "compared",
                                "correct": "yes" if value.lower() == gold.lower() else "no"})
        else:  # the agent: search, read the first hit, answer
            turns = sum(m["role"] == "assistant" for m in msgs)
            question = next(m["content"] for m in msgs if m["role"] == "user")
            if turns == 0:
                reply = ('<think>search</think><tool_call>{"name": "web_search", "arguments": '
                         '{"query": "NCT02294461 regimen", "k": 3}}</tool_call>')
            elif turns == 1:
                url = re.search(r"<(http://[^>]+)>", msgs[-1]["content"]).group(1)
                reply = f'<tool_call>{{"name": "read_page", "arguments": {{"url": "{url}"}}}}</tool_call>'
            elif "ingredient" in question.lower():
                found = "ENZALUTAMIDE" if "enzalutamide" in msgs[-1]["content"] else "UNKNOWN"
                reply = f"<answer>INGREDIENT: {found}</answer>"
            else:
                reply = "<answer>DATE: Nov 17, 2026</answer>"
        self._send(200, json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                                    "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                                 "finish_reason": "stop"}],
                                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}))


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_eval_endpoint_on_medbrowsecomp_with_web_tools(server, tmp_path, monkeypatch, toolbox):
    monkeypatch.setenv("FAKE_ENDPOINT_KEY", "sk-very-secret")
    csv_path = M.encode_file([["prompt", "gold", "task_name"],
                              ["For clinical trial NCT02294461. Among the more effective regimen ingredients, find "
                               "the ingredient starting with E. Reply INGREDIENT: name", "ENZALUTAMIDE", "Ingredient"],
                              ["For clinical trial NCT02294461. Find the exclusivity date, or DATE: NA", "NA",
                               "Exclusivity_Date"]], tmp_path / "final121_cell_combo_shift3_b64.csv")
    out = tmp_path / "endpoint.json"
    rc = cli.main(["eval-endpoint", "--base-url", f"{server}/agent/v1", "--model", "fake-agent",
                   "--api-key-env", "FAKE_ENDPOINT_KEY", "--questions", str(csv_path), "--out", str(out),
                   "--web", "searxng", "--web-url", f"{server}/searx", "--allow-private",
                   "--judge-base-url", f"{server}/judge/v1", "--judge-model", "fake-judge", "--max-calls", "5"])
    assert rc == 0
    summary = json.loads(out.read_text())
    assert summary["questions"] == 2 and summary["k"] == 1 and summary["tools"] == ["medical", "web"]
    rules = summary["rules"]
    assert rules["pass@1"]["mean"] == 0.5 and rules["pass@1_by_task_name"]["Ingredient"]["mean"] == 1.0
    assert rules["pass@1_by_task_name"]["Exclusivity_Date"]["mean"] == 0.0 and rules["answer_rate"] == 1.0
    assert rules["pass@1_by_hops"]["1"]["questions"] == 1 and rules["tool_calls_per_question"] == 2.0
    assert summary["judge"]["pass@1"]["mean"] == 0.5 and summary["judge_agrees_with_rules"] == 1.0
    assert summary["endpoint"] == {"base_url": f"{server}/agent/v1", "model": "fake-agent"}
    rows = [json.loads(line) for line in out.with_suffix(".rows.jsonl").read_text().splitlines()]
    right = next(r for r in rows if r["correct"])
    assert right["prediction"] == "INGREDIENT: ENZALUTAMIDE" and right["judge"] == "medbrowsecomp_rules"
    tool_text = " ".join(str(m.get("content")) for m in right["messages"] if m["role"] == "tool")
    assert "[1] NCT02294461 regimen <http://127.0.0.1:" in tool_text and "enzalutamide (brand Xtandi)" in tool_text
    system = right["messages"][0]["content"]
    assert "- web_search(query, k=5)" in system and "- diagnose(" in system
    assert "Bearer sk-very-secret" in Handler.auth  # sent to the endpoint ...
    for written in tmp_path.rglob("*.json*"):  # ... and never written anywhere
        assert "sk-very-secret" not in written.read_text()
    assert any((tmp_path / "web_cache").glob("*.json"))  # the web answers cached: a rerun is free


def test_eval_endpoint_refuses_bad_settings(tmp_path, capsys):
    assert cli.main(["eval-endpoint", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--questions",
                     str(tmp_path / "missing.csv"), "--judge-model", "j"]) == 2
    assert "--judge-base-url and --judge-model go together" in capsys.readouterr().err
    assert cli.main(["eval-endpoint", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--questions",
                     str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv: file not found" in capsys.readouterr().err
