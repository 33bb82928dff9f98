"""The paper's general web tools — ``web_search(query, k)`` and ``read_page(url)`` — behind providers.

Scope: MedResearcher-R1's agent has WebSearch and DocumentRead beside its private medical retriever;
this module gives the kit's agent the same two tools, with the network kept behind a small provider
interface so that they exist on every machine:

* :class:`OfflineProvider` (the default) searches the kit's own corpus (the BM25 index of
  :mod:`medkit.retriever`) and reads its passages, under ``kb://passage/<id>`` URLs: no network, so
  the tools work in CI and in the cpu profile, and a run is reproducible.
* :class:`SearxngProvider` queries a self-hosted SearXNG instance's JSON API (``/search?format=json``).
* :class:`BraveProvider` queries the Brave Search API; its key comes from an environment variable
  (``BRAVE_API_KEY`` by default) read at request time, never written to a log, a result or the cache.
* :class:`HttpReader` fetches a page and turns its HTML into clean text with ``trafilatura``
  (plain text passes through; any other content type is refused with a clear message).

Every online request goes through :class:`HttpClient`: only ``http``/``https`` URLs; no request to a
private, loopback, link-local or reserved address unless ``allow_private`` (the tests allow loopback),
checked on the resolved address of every hop of a redirect chain; a timeout per request; bounded
retries with backoff on network faults, 408, 429 and 5xx; responses capped at ``max_bytes``; an on-disk
cache (one JSON file per request, keyed without secrets) so that a rerun is reproducible and free.

:class:`WebTools` exposes the two tools as typed methods with Google-style docstrings (the agent's tool
schemas come from them, as for :class:`medkit.tools.MedicalToolbox`); they never raise — a failed
search or page is a one-line ``"Error: ..."`` text naming the URL, and the rollout continues.
Select the provider with :func:`web_tools_from_config` (a notebook's ``WEB`` parameter).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode, urljoin, urlsplit

from .errors import ConfigError
from .tools import error_text

SEARCH_K = 5
MAX_K = 20
MAX_QUERY_CHARS = 400
SNIPPET_CHARS = 200
PAGE_CHARS = 4_000          # of a page's text returned by read_page (the agent's context is small)
MAX_BYTES = 2_000_000       # of a response body read from the network
MAX_REDIRECTS = 5
OFFLINE_SCHEME = "kb"
CACHE_VERSION = 1


class WebError(Exception):
    """A search or page request that failed; its message names the URL (never a key) and is shown to the agent."""


@dataclass(frozen=True)
class SearchResult:
    title: str
    url: str
    snippet: str


@dataclass(frozen=True)
class Page:
    url: str
    title: str
    text: str


class SearchProvider(Protocol):
    name: str

    def search(self, query: str, k: int) -> list[SearchResult]: ...


class PageReader(Protocol):
    def read(self, url: str) -> Page: ...


# --------------------------------------------------------------------------- URL safety


def check_url(url: str, *, allow_private: bool = False,
              resolve: Callable[[str], Sequence[str]] | None = None) -> str:
    """``url`` if it may be fetched, else :class:`WebError`: http(s) only, a host name, and (unless
    ``allow_private``) no address of the host private, loopback, link-local, multicast or reserved."""
    if not isinstance(url, str) or not url.strip():
        raise WebError("the URL is empty")
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise WebError(f"only http(s) URLs can be read, not {parts.scheme or 'a relative URL'!r}: {url}")
    host = parts.hostname
    if not host:
        raise WebError(f"no host in {url}")
    if parts.username or parts.password:
        raise WebError(f"credentials in a URL are refused: {parts.scheme}://{host}")
    if allow_private:
        return url
    for address in (resolve or _addresses)(host):
        ip = ipaddress.ip_address(address.split("%")[0])
        if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved \
                or ip.is_unspecified:
            raise WebError(f"{host} is a private or local address ({ip}); refused (allow_private is off): {url}")
    return url


def _addresses(host: str) -> list[str]:
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(host, None)})
    except (socket.gaierror, UnicodeError) as e:
        raise WebError(f"cannot resolve {host}: {e}") from None


# --------------------------------------------------------------------------- HTTP with cache and retries


@dataclass
class Response:
    url: str
    status: int
    content_type: str
    body: str


class HttpClient:
    """GET with URL checks on every redirect, a timeout, bounded retries and an on-disk cache.

    ``cache_dir`` None: no cache. ``secret_headers`` name environment variables whose values are sent
    as headers (e.g. ``{"X-Subscription-Token": "BRAVE_API_KEY"}``): read at request time, never part
    of a cache key, an error message or anything written."""

    def __init__(self, *, timeout: float = 10.0, retries: int = 2, backoff: float = 0.5,
                 cache_dir: str | Path | None = None, allow_private: bool = False, max_bytes: int = MAX_BYTES,
                 user_agent: str = "medkit-web/1 (research agent; +https://github.com)",
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if timeout <= 0 or retries < 0:
            raise ConfigError(f"timeout must be > 0 and retries >= 0, got {timeout!r}, {retries!r}")
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.allow_private, self.max_bytes, self.user_agent = allow_private, int(max_bytes), user_agent
        self._sleep = sleep
        self.requests_sent = 0  # network requests, retries and redirects included (cache hits excluded)

    def get(self, url: str, params: dict[str, Any] | None = None,
            secret_headers: dict[str, str] | None = None, accept: str = "*/*") -> Response:
        if params:
            url = url + ("&" if "?" in url else "?") + urlencode(params)
        check_url(url, allow_private=self.allow_private)
        key = hashlib.sha256(json.dumps([CACHE_VERSION, url, accept]).encode()).hexdigest()
        cached = self._cached(key)
        if cached is not None:
            return cached
        headers = {"User-Agent": self.user_agent, "Accept": accept}
        for header, env in (secret_headers or {}).items():
            value = os.environ.get(env)
            if not value:
                raise WebError(f"the environment variable {env} (the key for {urlsplit(url).hostname}) is not set")
            headers[header] = value
        response = self._follow(url, headers)
        if self.cache_dir is not None and response.status == 200:
            from .io import write_json

            write_json(self.cache_dir / f"{key}.json", {"request": {"url": url, "accept": accept},
                                                        "response": asdict(response)})
        return response

    def _cached(self, key: str) -> Response | None:
        if self.cache_dir is None:
            return None
        path = self.cache_dir / f"{key}.json"
        try:
            return Response(**json.loads(path.read_text(encoding="utf-8"))["response"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent or damaged: fetched again and rewritten

    def _follow(self, url: str, headers: dict[str, str]) -> Response:
        for _ in range(MAX_REDIRECTS + 1):
            status, location, content_type, body = self._with_retries(url, headers)
            if status in (301, 302, 303, 307, 308) and location:
                url = check_url(urljoin(url, location), allow_private=self.allow_private)
                continue
            if status != 200:
                raise WebError(f"HTTP {status} from {_public(url)}")
            return Response(url, status, content_type, body)
        raise WebError(f"more than {MAX_REDIRECTS} redirects from {_public(url)}")

    def _with_retries(self, url: str, headers: dict[str, str]) -> tuple[int, str | None, str, str]:
        import requests

        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(self.backoff * 2 ** (attempt - 1))
            self.requests_sent += 1
            try:
                with requests.get(url, headers=headers, timeout=self.timeout, allow_redirects=False,
                                  stream=True) as r:
                    if r.status_code in (408, 429) or r.status_code >= 500:
                        problem = f"HTTP {r.status_code}"
                        continue
                    body = r.raw.read(self.max_bytes + 1, decode_content=True)
                    if len(body) > self.max_bytes:
                        raise WebError(f"{_public(url)} is larger than {self.max_bytes:,} bytes")
                    text = body.decode(r.encoding or "utf-8", errors="replace")
                    return r.status_code, r.headers.get("Location"), r.headers.get("Content-Type", ""), text
            except requests.Timeout:
                problem = f"no answer within {self.timeout:g} s"
            except requests.RequestException as e:
                problem = f"{type(e).__name__}"
        raise WebError(f"{problem} from {_public(url)} after {self.retries + 1} attempt(s)")


def _public(url: str) -> str:
    """``url`` without its query string (where an API key could sit) for messages."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _json(response: Response, what: str) -> Any:
    try:
        return json.loads(response.body)
    except ValueError:
        raise WebError(f"{what} did not answer JSON ({_public(response.url)})") from None


# --------------------------------------------------------------------------- providers


class OfflineProvider:
    """Web search over the kit's own corpus (BM25 over the knowledge base's passages), pages by passage id."""

    name = "offline"

    def __init__(self, retriever: Any, passages: Any) -> None:
        self._retriever = retriever
        by_id = passages.drop_duplicates("passage_id").set_index("passage_id")
        self._title = by_id["title"].astype(str).to_dict()
        self._text = by_id["text"].astype(str).to_dict()

    @staticmethod
    def url(passage_id: str) -> str:
        return f"{OFFLINE_SCHEME}://passage/{passage_id}"

    def search(self, query: str, k: int) -> list[SearchResult]:
        return [SearchResult(h.title, self.url(h.passage_id), h.text) for h in self._retriever.search(query, k=k)]

    def read(self, url: str) -> Page:
        prefix = f"{OFFLINE_SCHEME}://passage/"
        pid = url[len(prefix):] if url.startswith(prefix) else None
        if pid not in self._text:
            raise WebError(f"no passage {url!r} in the kit's corpus (offline web tools read {prefix}<id> URLs)")
        return Page(url, self._title[pid], self._text[pid])


class SearxngProvider:
    """A SearXNG instance's JSON API (enable ``json`` in its ``search.formats`` setting)."""

    name = "searxng"

    def __init__(self, base_url: str, client: HttpClient) -> None:
        self.base_url, self.client = base_url.rstrip("/"), client

    def search(self, query: str, k: int) -> list[SearchResult]:
        data = _json(self.client.get(f"{self.base_url}/search", {"q": query, "format": "json"},
                                     accept="application/json"), "SearXNG")
        rows = data.get("results") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            raise WebError(f"SearXNG answered without a results list ({self.base_url})")
        return _results(rows, "content")[:k]


class BraveProvider:
    """The Brave Search API (``/res/v1/web/search``); the key is read from ``key_env`` at request time."""

    name = "brave"

    def __init__(self, client: HttpClient, *, key_env: str = "BRAVE_API_KEY",
                 base_url: str = "https://api.search.brave.com") -> None:
        self.client, self.key_env, self.base_url = client, key_env, base_url.rstrip("/")

    def search(self, query: str, k: int) -> list[SearchResult]:
        data = _json(self.client.get(f"{self.base_url}/res/v1/web/search", {"q": query, "count": k},
                                     secret_headers={"X-Subscription-Token": self.key_env},
                                     accept="application/json"), "Brave Search")
        web = data.get("web") if isinstance(data, dict) else None
        rows = web.get("results") if isinstance(web, dict) else None
        if not isinstance(rows, list):
            return []  # Brave omits "web" when nothing matched
        return _results(rows, "description")[:k]


def _results(rows: list[Any], snippet_field: str) -> list[SearchResult]:
    out = []
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("url"), str):
            continue  # a malformed row is skipped, never shown as a result
        out.append(SearchResult(str(row.get("title") or row["url"]), row["url"], str(row.get(snippet_field) or "")))
    return out


class HttpReader:
    """A page over HTTP(S) as clean text: HTML through trafilatura, plain text as it is."""

    def __init__(self, client: HttpClient) -> None:
        self.client = client

    def read(self, url: str) -> Page:
        response = self.client.get(url, accept="text/html,text/plain;q=0.9")
        kind = response.content_type.split(";")[0].strip().lower()
        if kind in ("text/html", "application/xhtml+xml", ""):
            return Page(response.url, *html_text(response.body, response.url))
        if kind == "text/plain":
            return Page(response.url, "", response.body)
        raise WebError(f"{_public(response.url)} is {kind}, not an HTML or text page")


def html_text(html: str, url: str = "") -> tuple[str, str]:
    """(title, main text) of an HTML page, boilerplate removed (trafilatura); an empty text is an error."""
    import trafilatura

    text = trafilatura.extract(html, url=url or None, include_comments=False, include_tables=True,
                               favor_recall=True, deduplicate=False)  # True drops a page seen before in this process
    if not text or not text.strip():
        raise WebError(f"no readable text in {_public(url) if url else 'the page'}")
    meta = trafilatura.extract_metadata(html)
    return (getattr(meta, "title", None) or ""), text.strip()


# --------------------------------------------------------------------------- the tools


class WebTools:
    """``web_search`` and ``read_page`` for the agent, over one search provider and one page reader."""

    TOOL_NAMES = ("web_search", "read_page")

    def __init__(self, provider: SearchProvider, reader: PageReader) -> None:
        self.provider, self.reader = provider, reader

    def web_search(self, query: str, k: int = SEARCH_K) -> str:
        """Search the web.

        Args:
            query: What to look for, e.g. "Fabry disease enzyme replacement therapy".
            k: Number of results (1-20).

        Returns:
            One block per result, best first: "[n] title <url>" and a short snippet; pass a url to read_page().
        """
        if not isinstance(query, str) or not query.strip():
            return error_text("query must be a non-empty string.")
        if len(query) > MAX_QUERY_CHARS:
            return error_text(f"query is longer than {MAX_QUERY_CHARS} characters.")
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            return error_text(f"k must be an integer from 1 to {MAX_K}.")
        try:
            results = self.provider.search(query.strip(), k)
        except WebError as e:
            return error_text(f"web search failed: {e}")
        if not results:
            return f"No web results for {query.strip()!r}; try other words."
        lines = []
        for i, r in enumerate(results, start=1):
            snippet = " ".join(r.snippet.split())
            if len(snippet) > SNIPPET_CHARS:
                snippet = snippet[:SNIPPET_CHARS].rsplit(" ", 1)[0] + " ..."
            lines.append(f"[{i}] {' '.join(r.title.split())} <{r.url}>\n    {snippet}")
        return "\n".join(lines)

    def call(self, name: Any, arguments: Any = None) -> str:
        """Dispatch a tool call by name with validated arguments (:func:`medkit.tools.call_tool`)."""
        from .tools import call_tool

        return call_tool(self, self.TOOL_NAMES, name, arguments)

    def read_page(self, url: str) -> str:
        """Read a web page as text.

        Args:
            url: An http(s) address from web_search() (or a kb:// address from the offline search).

        Returns:
            The page's title and main text (boilerplate removed), cut to a few thousand characters.
        """
        if not isinstance(url, str) or not url.strip():
            return error_text("url must be a non-empty string.")
        try:
            page = self.reader.read(url.strip())
        except WebError as e:
            return error_text(f"cannot read the page: {e}")
        text = page.text if len(page.text) <= PAGE_CHARS else page.text[:PAGE_CHARS].rsplit(" ", 1)[0] + " ..."
        return f"{page.title}\n<{page.url}>\n{text}" if page.title else f"<{page.url}>\n{text}"


class _Readers:
    """kb:// pages from the offline corpus, http(s) pages from the network (when a reader for them exists)."""

    def __init__(self, offline: OfflineProvider | None, online: PageReader | None) -> None:
        self.offline, self.online = offline, online

    def read(self, url: str) -> Page:
        if url.startswith(f"{OFFLINE_SCHEME}://"):
            if self.offline is None:
                raise WebError(f"{url} is an offline corpus address; this run has no offline corpus")
            return self.offline.read(url)
        if self.online is None:
            raise WebError(f"the web tools are offline in this run (WEB provider 'offline'): {url} is not read")
        return self.online.read(url)


def web_tools_from_config(config: dict[str, Any] | None, *, toolbox: Any = None, passages: Any = None,
                          cache_dir: str | Path | None = None) -> WebTools:
    """The web tools a run's ``WEB`` setting asks for.

    ``{"provider": "offline"}`` (the default; needs ``toolbox`` or ``passages`` with a retriever),
    ``{"provider": "searxng", "base_url": ...}`` or ``{"provider": "brave", "key_env": "BRAVE_API_KEY"}``;
    shared keys ``timeout`` (s), ``retries``, ``cache`` (true: ``cache_dir``), ``allow_private`` (loopback
    and private addresses, for a local SearXNG or tests). An unknown provider or key is a clear error."""
    config = dict(config or {"provider": "offline"})
    known = {"provider", "base_url", "key_env", "timeout", "retries", "cache", "allow_private"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ConfigError(f"WEB: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    provider = config.get("provider", "offline")
    offline = None
    if toolbox is not None:
        offline = OfflineProvider(toolbox.retriever, toolbox.passages)
    if provider == "offline":
        if offline is None:
            raise ConfigError("WEB provider 'offline' searches the kit's corpus: pass the toolbox")
        return WebTools(offline, _Readers(offline, None))
    client = HttpClient(timeout=float(config.get("timeout", 10)), retries=int(config.get("retries", 2)),
                        cache_dir=cache_dir if config.get("cache", True) else None,
                        allow_private=bool(config.get("allow_private", False)))
    if provider == "searxng":
        if not config.get("base_url"):
            raise ConfigError("WEB provider 'searxng' needs base_url (the instance, e.g. http://localhost:8888)")
        search: SearchProvider = SearxngProvider(str(config["base_url"]), client)
    elif provider == "brave":
        search = BraveProvider(client, key_env=str(config.get("key_env", "BRAVE_API_KEY")),
                               **({"base_url": str(config["base_url"])} if config.get("base_url") else {}))
    else:
        raise ConfigError(f"WEB provider must be offline, searxng or brave, got {provider!r}")
    return WebTools(search, _Readers(offline, HttpReader(client)))
