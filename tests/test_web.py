"""The web tools against a local HTTP server on 127.0.0.1: canned search answers and pages, slow, failing,
malformed and redirecting responses, the key kept out of everything written, and the offline provider."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest

from medkit import web as W
from medkit.errors import ConfigError
from medkit.tools import ToolSet

ARTICLE = """<html><head><title>Fabry disease - overview</title></head><body>
<nav><a href="/">Home</a> | <a href="/about">About</a> | Menu Menu Menu</nav>
<article><h1>Fabry disease</h1>
<p>Fabry disease is an X-linked lysosomal storage disorder caused by pathogenic variants in GLA, which
encodes the enzyme alpha-galactosidase A. Deficient enzyme activity leads to accumulation of
globotriaosylceramide in many cell types.</p>
<p>Typical early features include neuropathic pain in the hands and feet, angiokeratomas, hypohidrosis
and corneal verticillata. Later the kidneys, heart and brain are affected.</p>
<p>Enzyme replacement therapy with agalsidase alfa or agalsidase beta, and the oral chaperone migalastat
for amenable variants, are the disease-specific treatments.</p></article>
<footer>Copyright 2026. Cookie settings. Privacy.</footer></body></html>"""


class Handler(BaseHTTPRequestHandler):
    calls: dict[str, int] = {}
    seen_headers: list[dict[str, str]] = []

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: str | bytes, ctype: str = "text/html; charset=utf-8",
              headers: dict[str, str] | None = None) -> None:
        data = body.encode() if isinstance(body, str) else body
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (the timeout test)
            pass

    def do_GET(self):  # noqa: N802
        url = urlsplit(self.path)
        q = parse_qs(url.query)
        Handler.calls[url.path] = Handler.calls.get(url.path, 0) + 1
        Handler.seen_headers.append(dict(self.headers))
        if url.path == "/search":  # SearXNG
            rows = [{"title": "Fabry disease - overview", "url": f"http://127.0.0.1:{self.server.server_port}/article",
                     "content": "An X-linked lysosomal storage disorder ..."},
                    {"title": "no url: skipped"},
                    {"title": "Migalastat", "url": "https://example.org/migalastat", "content": "An oral chaperone."}]
            return self._send(200, json.dumps({"query": q["q"][0], "results": rows}), "application/json")
        if url.path == "/res/v1/web/search":  # Brave
            if self.headers.get("X-Subscription-Token") != "sekret-key-123":
                return self._send(401, "{}", "application/json")
            n = int(q["count"][0])
            rows = [{"title": f"Result {i}", "url": f"https://example.org/{i}", "description": f"snippet {i}"}
                    for i in range(1, 9)]
            return self._send(200, json.dumps({"web": {"results": rows[:n]}}), "application/json")
        if url.path == "/article":
            return self._send(200, ARTICLE)
        if url.path == "/plain":
            return self._send(200, "Just text, no markup.", "text/plain")
        if url.path == "/pdf":
            return self._send(200, b"%PDF-1.4 ...", "application/pdf")
        if url.path == "/empty":
            return self._send(200, "<html><body></body></html>")
        if url.path.startswith("/garbage-json"):
            return self._send(200, "<<not json>>", "application/json")
        if url.path == "/slow":
            time.sleep(1.5)
            return self._send(200, ARTICLE)
        if url.path == "/flaky":  # fails twice, then answers
            if Handler.calls[url.path] <= 2:
                return self._send(503, "busy")
            return self._send(200, ARTICLE)
        if url.path == "/down":
            return self._send(500, "broken")
        if url.path == "/missing":
            return self._send(404, "not here")
        if url.path == "/redirect":
            return self._send(302, "", headers={"Location": "/article"})
        if url.path == "/loop":
            return self._send(302, "", headers={"Location": "/loop"})
        if url.path == "/to-ftp":
            return self._send(302, "", headers={"Location": "ftp://example.org/file"})
        if url.path == "/huge":
            return self._send(200, "<html><body><article>" + "<p>Fabry disease affects the kidneys and the heart over "
                              "decades of slow storage.</p>" * 1000 + "</article></body></html>")
        return self._send(404, "unknown")


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()


@pytest.fixture(autouse=True)
def fresh_counts():
    Handler.calls.clear()
    Handler.seen_headers.clear()


def client(tmp_path=None, **kw):
    kw.setdefault("timeout", 1.0)
    kw.setdefault("retries", 2)
    return W.HttpClient(allow_private=True, cache_dir=tmp_path, sleep=lambda s: None, **kw)


def test_searxng_search_and_page_reading_over_http(server, tmp_path):
    c = client(tmp_path)
    tools = W.WebTools(W.SearxngProvider(server, c), W.HttpReader(c))
    out = tools.web_search("fabry disease", k=5)
    assert out.startswith("[1] Fabry disease - overview <http://127.0.0.1:") and "[2] Migalastat <https://example.org" in out
    assert "no url" not in out  # a malformed row is skipped
    page = tools.read_page(f"{server}/article")
    assert page.splitlines()[0].startswith("Fabry disease") and page.splitlines()[1].startswith("<http://127.0.0.1:")
    assert "alpha-galactosidase A" in page
    assert "Cookie settings" not in page and "Menu Menu" not in page  # boilerplate removed
    assert tools.read_page(f"{server}/plain").endswith("Just text, no markup.")
    assert tools.read_page(f"{server}/redirect").count("alpha-galactosidase") == 1  # a redirect is followed


def test_cache_makes_a_rerun_free_and_identical(server, tmp_path):
    c = client(tmp_path)
    tools = W.WebTools(W.SearxngProvider(server, c), W.HttpReader(c))
    first = (tools.web_search("fabry", k=2), tools.read_page(f"{server}/article"))
    sent = c.requests_sent
    again = W.WebTools(W.SearxngProvider(server, client(tmp_path)), W.HttpReader(client(tmp_path)))
    assert (again.web_search("fabry", k=2), again.read_page(f"{server}/article")) == first
    assert Handler.calls == {"/search": 1, "/article": 1} and sent == 2
    for entry in tmp_path.glob("*.json"):
        entry.write_text("{torn")  # a damaged entry is fetched again and rewritten, not an error
    assert (again.web_search("fabry", k=2), again.read_page(f"{server}/article")) == first
    assert Handler.calls == {"/search": 2, "/article": 2}
    assert all(json.loads(p.read_text())["response"]["status"] == 200 for p in tmp_path.glob("*.json"))


def test_the_key_is_sent_but_never_written_or_shown(server, tmp_path, monkeypatch):
    monkeypatch.setenv("BRAVE_API_KEY", "sekret-key-123")
    c = client(tmp_path)
    tools = W.WebTools(W.BraveProvider(c, base_url=server), W.HttpReader(c))
    out = tools.web_search("fabry", k=3)
    assert out.count("\n[") == 2 and "[3] Result 3 <https://example.org/3>" in out
    assert Handler.seen_headers[-1]["X-Subscription-Token"] == "sekret-key-123"
    assert all("sekret" not in p.read_text() for p in tmp_path.glob("*.json"))
    monkeypatch.setenv("BRAVE_API_KEY", "wrong")
    denied = W.WebTools(W.BraveProvider(client(), base_url=server), W.HttpReader(client())).web_search("other", k=3)
    assert denied.startswith("Error: web search failed: HTTP 401") and "wrong" not in denied
    monkeypatch.delenv("BRAVE_API_KEY")
    unset = W.WebTools(W.BraveProvider(client(), base_url=server), W.HttpReader(client())).web_search("x", k=3)
    assert "BRAVE_API_KEY" in unset and unset.startswith("Error:")


def test_slow_failing_and_malformed_answers_are_clear_errors(server):
    c = client(timeout=0.5, retries=1)
    tools = W.WebTools(W.SearxngProvider(f"{server}/nothing-here", c), W.HttpReader(c))
    slow = tools.read_page(f"{server}/slow")
    assert slow.startswith("Error: cannot read the page: no answer within 0.5 s") and "/slow" in slow
    assert Handler.calls["/slow"] == 2  # bounded: one retry
    assert "HTTP 500" in tools.read_page(f"{server}/down") and Handler.calls["/down"] == 2
    assert "HTTP 404" in tools.read_page(f"{server}/missing") and Handler.calls["/missing"] == 1  # not retried
    assert "application/pdf" in tools.read_page(f"{server}/pdf")
    assert "no readable text" in tools.read_page(f"{server}/empty")
    assert "redirects" in tools.read_page(f"{server}/loop")
    assert "only http(s)" in tools.read_page(f"{server}/to-ftp")
    assert tools.web_search("x").startswith("Error: web search failed: HTTP 404")  # no such instance
    garbage = W.WebTools(W.SearxngProvider(f"{server}/garbage-json", c), W.HttpReader(c))
    assert garbage.web_search("x").startswith("Error: web search failed: SearXNG did not answer JSON")
    huge = garbage.read_page(f"{server}/huge")  # under MAX_BYTES: read, then cut to PAGE_CHARS
    assert huge.startswith("<") and len(huge) < W.PAGE_CHARS + 100
    small = W.HttpReader(W.HttpClient(allow_private=True, max_bytes=1000, sleep=lambda s: None))
    with pytest.raises(W.WebError, match="larger than 1,000 bytes"):
        small.read(f"{server}/huge")


def test_flaky_server_is_retried_within_the_bound(server):
    c = client(retries=2)
    assert "alpha-galactosidase" in W.WebTools(W.SearxngProvider(server, c), W.HttpReader(c)).read_page(f"{server}/flaky")
    assert Handler.calls["/flaky"] == 3


def test_private_loopback_and_non_http_urls_are_refused():
    resolve = {"intranet.local": ["10.0.0.5"], "meta": ["169.254.169.254"], "pub.example": ["93.184.216.34"],
               "six": ["::1"]}.get
    for url in ("http://intranet.local/x", "http://meta/latest", "http://127.0.0.1:8080/", "http://six/"):
        with pytest.raises(W.WebError, match="private or local"):
            W.check_url(url, resolve=lambda h: resolve(h) or [h])
    assert W.check_url("https://pub.example/a?b=1", resolve=resolve) == "https://pub.example/a?b=1"
    for url, why in (("file:///etc/passwd", "only http"), ("ftp://x/y", "only http"), ("javascript:alert(1)", "only http"),
                     ("http://user:pw@pub.example/", "credentials"), ("", "empty"), ("http:///nohost", "no host")):
        with pytest.raises(W.WebError, match=why):
            W.check_url(url, resolve=resolve)
    assert W.check_url("http://127.0.0.1:9/", allow_private=True)  # tests and a local SearXNG opt in
    # without allow_private, the loopback server itself is refused before any request
    tools = W.WebTools(W.SearxngProvider("http://127.0.0.1:9", W.HttpClient()), W.HttpReader(W.HttpClient()))
    assert "private or local" in tools.read_page("http://127.0.0.1:9/article")
    assert "private or local" in tools.web_search("fabry")


def test_bad_arguments_are_errors_not_exceptions(server):
    tools = W.WebTools(W.SearxngProvider(server, client()), W.HttpReader(client()))
    assert tools.web_search("").startswith("Error: query")
    assert tools.web_search("x", k=0).startswith("Error: k") and tools.web_search("x", k=True).startswith("Error: k")
    assert tools.web_search("x" * 1000).startswith("Error: query is longer")
    assert tools.read_page("  ").startswith("Error: url")
    assert tools.call("read_page", {"url": 5}).startswith("Error: read_page() argument 'url' must be a string")
    assert tools.call("open_shell", {}).startswith("Error: unknown tool 'open_shell'")


@pytest.fixture(scope="module")
def offline():
    class Hit:
        def __init__(self, pid, title, text):
            self.passage_id, self.title, self.text, self.entity_id = pid, title, text, pid

    passages = pd.DataFrame({"passage_id": ["MONDO:0010526", "DRUGBANK:DB05018"],
                             "title": ["Fabry disease", "Migalastat"],
                             "text": ["An X-linked lysosomal storage disease ...", "An oral pharmacological chaperone ..."]})

    class Retriever:
        def search(self, query, k=5):
            hits = [Hit(*row) for row in passages.itertuples(index=False)]
            return [h for h in hits if any(w in (h.title + h.text).lower() for w in query.lower().split())][:k]

    return W.OfflineProvider(Retriever(), passages)


def test_offline_provider_searches_and_reads_the_kits_corpus(offline):
    tools = W.WebTools(offline, offline)
    out = tools.web_search("chaperone", k=3)
    assert out == "[1] Migalastat <kb://passage/DRUGBANK:DB05018>\n    An oral pharmacological chaperone ..."
    assert tools.read_page("kb://passage/DRUGBANK:DB05018").startswith("Migalastat\n<kb://passage/DRUGBANK:DB05018>")
    assert "no passage" in tools.read_page("kb://passage/NOPE")
    assert tools.web_search("zzzz").startswith("No web results")


def test_web_tools_from_config(offline, tmp_path):
    class Box:
        TOOL_NAMES = ("search",)
        retriever = offline._retriever
        passages = pd.DataFrame({"passage_id": ["MONDO:0010526"], "title": ["Fabry disease"], "text": ["X-linked ..."]})

        def search(self, query: str) -> str:
            return "medical"

        def call(self, name, arguments=None):
            return self.search(**(arguments or {}))

    web = W.web_tools_from_config(None, toolbox=Box())
    assert web.read_page("https://example.org/").startswith("Error: cannot read the page: the web tools are offline")
    assert W.web_tools_from_config({"provider": "searxng", "base_url": "http://x"}, toolbox=Box(),
                                   cache_dir=tmp_path).reader.online is not None
    for bad, why in (({"provider": "bing"}, "offline, searxng or brave"), ({"provider": "searxng"}, "base_url"),
                     ({"provider": "offline", "apikey": "x"}, "unknown setting")):
        with pytest.raises(ConfigError, match=why):
            W.web_tools_from_config(bad, toolbox=Box())
    with pytest.raises(ConfigError, match="pass the toolbox"):
        W.web_tools_from_config(None)
    both = ToolSet(Box(), web)
    assert both.TOOL_NAMES == ("search", "web_search", "read_page")
    assert both.call("search", {"query": "x"}) == "medical"
    assert both.call("web_search", {"query": "fabry"}).startswith("[1] Fabry disease <kb://passage/MONDO:0010526>")
    assert both.call("nope").startswith("Error: unknown tool 'nope'; available tools: search, web_search, read_page")
    assert [t.__name__ for t in both.tools()] == ["search", "web_search", "read_page"]
