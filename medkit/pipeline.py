"""Running the whole kit: stages, papermill execution, timing and peak memory.

Scope: the main job behind ``make pipeline`` — build the knowledge base, fetch and
convert the model, execute every numbered notebook headless with papermill under
one profile (executed copies to ``results/<profile>/``) — and a per-stage report of
wall time and peak memory (the whole process tree, sampled) written to
``results/bench/pipeline_<profile>.json``.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from . import io as mio
from .errors import ConfigError, MedkitError
from .notebook_sources import check_pair
from .paths import data_dir, notebooks_dir, portable, portable_text, profile_data_dir, results_dir
from .profiles import check_profile


def numbered_notebooks(folder: Path | None = None) -> list[Path]:
    """``NN_name.ipynb`` notebooks in order."""
    folder = folder or notebooks_dir()
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def tree_rss_bytes(root: psutil.Process | None = None) -> int:
    """The RSS of a process tree now: ``root`` (default: this process) and all its children (0 once it has exited)."""
    root = root or psutil.Process()
    try:
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:  # the root has exited
        return 0
    total = 0
    for p in tree:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


class PeakMemory:
    """Samples the RSS of a process tree: by default this process and all its children
    (e.g. a Jupyter kernel), or the tree under ``root``."""

    def __init__(self, interval: float = 0.2, root: psutil.Process | None = None) -> None:
        self.interval = interval
        self.root = root
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        return tree_rss_bytes(self.root)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        self.peak_bytes = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._sample())


@contextmanager
def stage(report: list[dict[str, Any]], name: str) -> Iterator[None]:
    """Time a stage and record its peak memory into ``report``."""
    t0 = time.perf_counter()
    status = "ok"
    with PeakMemory() as mem:
        try:
            yield
        except BaseException:
            status = "failed"
            raise
        finally:
            report.append({"stage": name, "status": status, "seconds": round(time.perf_counter() - t0, 1),
                           "peak_rss_mb": round(mem.peak_bytes / 2**20, 1)})


@functools.cache
def ipc_kernel_manager() -> type:
    """papermill's kernel manager on local (IPC) sockets instead of TCP ports: nothing listens on the
    network, and ipykernel no longer prints its "running over TCP without encryption" warning once
    per notebook."""
    from jupyter_client import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs: Any) -> None:
            kwargs.setdefault("transport", "ipc")
            super().__init__(**kwargs)

    return IPCKernelManager


def run_notebook(path: Path, profile: str, out_dir: Path, parameters: dict[str, Any] | None = None) -> Path:
    """Execute one notebook with papermill; the executed copy goes to ``out_dir/<name>``.

    The kernel writes into a scratch copy (``.<name>.running.ipynb``); only a run that finishes
    replaces ``<name>``, so a failed rerun never clobbers a committed reference notebook: its copy
    is kept as ``<name-stem>.failed.ipynb`` beside it. Both copies go through :func:`portable_copy`.
    The figures and metrics the notebook writes into ``out_dir`` are kept only when it finishes too
    (:func:`medkit.io.all_or_nothing`)."""
    import papermill as pm

    from .notebook_output import HEADLESS_ENV

    check_pair(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / path.name
    running = out_dir / f".{path.stem}.running.ipynb"
    params = {"PROFILE": profile, **(parameters or {})}
    try:  # the kernel inherits MEDKIT_HEADLESS=1: medkit's bars stay off (notebook_output.headless)
        with environment(HEADLESS_ENV, "1"), PeakMemory() as mem, mio.all_or_nothing(out_dir):
            pm.execute_notebook(str(path), str(running), parameters=params, kernel_name="python3",
                                cwd=str(path.parent), progress_bar=False, log_output=False,
                                kernel_manager_class=ipc_kernel_manager())
    except pm.PapermillExecutionError as e:
        failed = portable_copy(running, out_dir / f"{path.stem}.failed.ipynb")
        raise MedkitError(f"{path.name} failed in cell {e.exec_count} ({e.ename}: {e.evalue}); "
                          f"the executed copy with the error is {portable(failed)}") from None
    except Exception as e:  # a dead kernel (e.g. killed for memory) or a papermill error: name the notebook
        from nbclient.exceptions import DeadKernelError

        failed = portable_copy(running, out_dir / f"{path.stem}.failed.ipynb") if running.exists() else None
        where = f"; partial copy: {portable(failed)}" if failed else ""
        why = (f"its kernel died — out of memory? the run peaked at {mem.peak_bytes / 2**30:.1f} of "
               f"{psutil.virtual_memory().total / 2**30:.1f} GiB" if isinstance(e, DeadKernelError)
               else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        raise MedkitError(f"{path.name} did not finish ({why}){where}") from None
    return portable_copy(running, out)


@contextmanager
def environment(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` for the block (a kernel started inside inherits it), then restored."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def portable_copy(src: Path, dest: Path) -> Path:
    """Move the executed notebook ``src`` to ``dest`` (atomically), with every text output and the
    papermill paths made machine-independent by :func:`paths.portable_text`."""
    import nbformat

    nb = nbformat.read(src, as_version=4)
    portable_outputs(nb)
    if "papermill" in nb.metadata:
        nb.metadata["papermill"]["output_path"] = portable(dest)
    with mio.atomic_path(dest) as tmp:
        nbformat.write(nb, str(tmp))
    src.unlink(missing_ok=True)
    return dest


def portable_outputs(nb: Any) -> None:
    """Rewrite, in place, the text of ``nb``'s outputs and papermill's ``input_path`` with portable paths
    (``output_path`` names the copy's final place: :func:`portable_copy` sets it)."""
    def fix(value: Any) -> Any:
        if isinstance(value, str):
            return portable_text(value)
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    for cell in nb.cells:
        for out in cell.get("outputs", []):
            for key in ("text", "traceback", "evalue"):
                if key in out:
                    out[key] = fix(out[key])
            for mime in ("text/plain", "text/html", "text/markdown"):
                if mime in out.get("data", {}):
                    out["data"][mime] = fix(out["data"][mime])
    meta = nb.metadata.get("papermill", {})
    if meta.get("input_path"):
        meta["input_path"] = portable(meta["input_path"])


def run_notebooks(profile: str, *, only: list[str] | None = None, report: list[dict[str, Any]] | None = None,
                  echo: Callable[[str], None] = print) -> list[Path]:
    check_profile(profile)
    books = numbered_notebooks()
    if only:
        books = [b for b in books if any(b.name.startswith(o) for o in only)]
        if not books:
            raise ConfigError(f"no notebook matches {only}")
    report = report if report is not None else []
    outs = []
    with mio.exclusive(data_dir() / f".{profile}.lock", f"{portable(profile_data_dir(profile))}"):  # one run per data folder
        for nb in books:
            echo(f"[{profile}] running {nb.name} ...")
            with stage(report, f"notebook {nb.stem}"):
                outs.append(run_notebook(nb, profile, results_dir(profile)))
            echo(f"[{profile}] {nb.name}: {report[-1]['seconds']} s, peak {report[-1]['peak_rss_mb']} MB")
    return outs


def run_pipeline(profile: str, echo: Callable[[str], None] = print) -> Path:
    """The main job: KB, model, every notebook; returns the stage report path."""
    check_profile(profile)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    try:
        # Data and model stages run in child processes, so that the memory they use is
        # measured per stage and is not carried into the notebook stages.
        with stage(report, "build knowledge base"):
            _run_child(["build-data"])
        if profile != "gpu":
            with stage(report, "fetch and convert model"):
                _run_child(["fetch-model"])
        run_notebooks(profile, report=report, echo=echo)
    finally:  # a failed run's report goes beside the last good one, not over it
        failed = any(s["status"] != "ok" for s in report) or len(report) == 0
        out = results_dir() / "bench" / f"pipeline_{profile}{'.failed' if failed else ''}.json"
        mio.write_json(out, {"profile": profile, "total_seconds": round(time.perf_counter() - t0, 1),
                             "stages": report, "machine": machine_facts()})
    echo(f"stage report: {portable(out)}")
    return out


def _run_child(args: list[str]) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "medkit", *args])
    if proc.returncode != 0:
        raise MedkitError(f"`python -m medkit {' '.join(args)}` failed with exit code {proc.returncode}")


def machine_facts() -> dict[str, Any]:
    import platform

    return {"cpu_count": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "machine": platform.machine(), **cpu_facts()}


def cpu_facts(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """The CPU's model and the instruction sets that change speed and float results here (bf16 in
    AVX-512 or AMX lets torch, OpenVINO and bitsandbytes take other kernels): runs on two machines are
    compared knowing this."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return {"cpu_model": None, "cpu_features": None}
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), None)
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return {"cpu_model": model,
            "cpu_features": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]}


def run_modes(script: str, modes: Iterable[str], *args: str) -> dict[str, dict[str, Any]]:
    """Run ``python script --mode M *args`` once per mode, each in a fresh process (so peak memory is
    its own); each run prints its result as JSON on its last line. A failed run is a clear error."""
    import json
    import subprocess
    import sys

    results = {}
    for mode in modes:
        proc = subprocess.run([sys.executable, script, "--mode", mode, *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise MedkitError(f"{Path(script).name} --mode {mode} failed:\n{proc.stderr[-3000:]}")
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


def bench_entry(run_mode: Callable[..., dict[str, Any]], main: Callable[..., Any]) -> None:
    """``__main__`` of a per-mode benchmark: ``--mode M [profile]`` runs one mode and prints its JSON,
    otherwise ``main([profile [extra ...]])`` runs them all (a benchmark may take extra arguments, e.g. modes)."""
    import json
    import sys

    if sys.argv[1:2] == ["--mode"]:
        print(json.dumps(run_mode(sys.argv[2], *(sys.argv[3:4] or ["cpu"]))))
    else:
        main(*(sys.argv[1:] or ["cpu"]))
