"""Latency of the web tools: offline search over the kit's corpus, and the online path against a loopback server.

The agent's ``web_search`` / ``read_page`` (``medkit.web``) run behind providers. This measures, per call,
p50 and p95 milliseconds of:

* ``offline_search`` — ``web_search`` over the kit's own corpus (BM25; the default provider): the baseline;
* ``offline_read`` — ``read_page`` of a ``kb://passage/<id>`` address;
* ``searxng_search`` — ``web_search`` through :class:`medkit.web.SearxngProvider` against a SearXNG-shaped JSON
  server on 127.0.0.1 (HTTP, URL checks, JSON parsing; no cache);
* ``searxng_search_cached`` — the same queries answered from the on-disk cache (a rerun);
* ``http_read`` — ``read_page`` of an HTML article over loopback HTTP, text extracted by trafilatura (no cache).

Loopback numbers are the kit's own overhead; a real search service adds its network time. Queries are the
titles of ``N`` corpus passages (seeded). Reports ratios to the baseline.
``python bench/bench_web_tools.py`` -> ``results/bench/web_tools.json``.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from medkit import io as mio
from medkit import paths
from medkit import web as W
from medkit.agent import is_tool_error
from medkit.tools import MedicalToolbox

N = 200
BASELINE = "offline_search"
ARTICLE = ("<html><head><title>{title}</title></head><body><nav>Home | About | Contact</nav><article>"
           "<h1>{title}</h1>{paragraphs}</article><footer>Cookie settings. Privacy.</footer></body></html>")


def _article(title: str, text: str) -> str:
    paragraphs = "".join(f"<p>{text} ({i})</p>" for i in range(6))
    return ARTICLE.format(title=title, paragraphs=paragraphs)


class _Handler(BaseHTTPRequestHandler):
    pages: dict[str, tuple[str, str]] = {}

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        port = self.server.server_address[1]
        if self.path.startswith("/search"):
            rows = [{"title": t, "url": f"http://127.0.0.1:{port}/page/{pid}", "content": x[:200]}
                    for pid, (t, x) in list(self.pages.items())[:5]]
            body, ctype = json.dumps({"results": rows}).encode(), "application/json"
        else:
            title, text = self.pages.get(self.path.rsplit("/", 1)[-1], ("missing", "missing"))
            body, ctype = _article(title, text).encode(), "text/html; charset=utf-8"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _timed(calls: list[Any]) -> dict[str, float]:
    ms = []
    for call in calls:
        t0 = time.perf_counter()
        out = call()
        ms.append((time.perf_counter() - t0) * 1000)
        if is_tool_error(out):
            raise SystemExit(f"a benchmarked call failed: {out}")
    q = statistics.quantiles(ms, n=20)
    return {"calls": len(ms), "p50_ms": round(statistics.median(ms), 3), "p95_ms": round(q[18], 3),
            "mean_ms": round(statistics.fmean(ms), 3)}


def main(_profile: str = "cpu") -> dict[str, Any]:
    toolbox = MedicalToolbox.from_kb()
    passages = toolbox.passages
    rows = passages.sample(N, random_state=13)
    queries = [str(t) for t in rows["title"]]
    _Handler.pages = {str(p): (str(t), str(x)) for p, t, x in zip(rows["passage_id"], rows["title"], rows["text"])}
    offline = W.web_tools_from_config(None, toolbox=toolbox)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    pids = list(_Handler.pages)
    random.Random(13).shuffle(pids)
    try:
        with tempfile.TemporaryDirectory() as cache:
            online = W.web_tools_from_config({"provider": "searxng", "base_url": base, "allow_private": True,
                                              "cache": False}, toolbox=toolbox)
            cached = W.web_tools_from_config({"provider": "searxng", "base_url": base, "allow_private": True},
                                             toolbox=toolbox, cache_dir=cache)
            for q in queries:  # fill the cache
                cached.web_search(q, 5)
            runs = {
                "offline_search": _timed([lambda q=q: offline.web_search(q, 5) for q in queries]),
                "offline_read": _timed([lambda p=p: offline.read_page(W.OfflineProvider.url(p)) for p in pids]),
                "searxng_search": _timed([lambda q=q: online.web_search(q, 5) for q in queries]),
                "searxng_search_cached": _timed([lambda q=q: cached.web_search(q, 5) for q in queries]),
                "http_read": _timed([lambda p=p: online.read_page(f"{base}/page/{p}") for p in pids]),
            }
    finally:
        srv.shutdown()
    base_ms = runs[BASELINE]["p50_ms"]
    result = {"benchmark": "web tool latency per call (medkit.web), loopback for the online path",
              "baseline": BASELINE, "queries": N, "runs": runs,
              "p50_over_baseline": {m: round(r["p50_ms"] / base_ms, 2) for m, r in runs.items()},
              "provenance": mio.provenance(builder="bench/bench_web_tools.py", n=N)}
    mio.write_json(paths.results_dir() / "bench" / "web_tools.json", result)
    print({m: (r["p50_ms"], r["p95_ms"]) for m, r in runs.items()})
    return result


if __name__ == "__main__":
    main()
