"""What the numbered notebooks print to stderr: warnings, library progress bars, medkit's own bars.

Scope: every notebook calls :func:`configure` once in its import cell. It makes warnings one line
with portable paths (no machine path in a committed notebook), turns off the progress bars of
transformers and datasets (weight loading, dataset maps: noise in an executed copy) and
transformers' info/warning logging and bitsandbytes' warning about an optional kernel, and silences only named deprecation warnings raised inside
libraries the kit cannot change. medkit's own bars go through :func:`progress`: tqdm.auto (a widget
in JupyterLab, a text bar in a terminal), but disabled when :func:`headless` — a notebook executed by
:func:`medkit.pipeline.run_notebook`, which sets ``MEDKIT_HEADLESS=1`` for the kernel it starts — so
an executed copy holds no bar refreshes, widget state or machine-bound rates.
It does not touch stdout, the kit's own messages, or warnings that are not listed here.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from typing import Any, Iterable, TextIO

from .paths import portable_text

HEADLESS_ENV = "MEDKIT_HEADLESS"

# (message regex, category, module regex): deprecation warnings raised by library internals that the
# kit's code does not call and cannot change; each one names why it is silenced.
LIBRARY_DEPRECATIONS: tuple[tuple[str, type[Warning], str], ...] = (
    # peft (PeftModel.__init__, prepare_model_for_kbit_training) and trl (models/utils.py) read
    # `model.is_gradient_checkpointing`, which transformers 5 deprecated in favour of
    # `is_activation_checkpointing`; medkit never reads it (grep medkit/): the call is theirs.
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning, r"transformers\.modeling_utils"),
)


def headless() -> bool:
    """True in a kernel started by :func:`medkit.pipeline.run_notebook` (``MEDKIT_HEADLESS=1``)."""
    return os.environ.get(HEADLESS_ENV, "").strip().lower() in {"1", "true", "yes"}


def format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                   line: str | None = None) -> str:
    """One line per warning, ``<where>:<line>: <Category>: <message>``, with the file made portable
    (``<site-packages>/…`` or repository-relative) and no echoed source line."""
    text = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    return f"{portable_text(filename)}:{lineno}: {category.__name__}: {text}\n"


def silence_library_deprecations() -> None:
    """Ignore exactly the warnings in :data:`LIBRARY_DEPRECATIONS` (other FutureWarnings still show)."""
    for message, category, module in LIBRARY_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def quiet_hf_libraries() -> None:
    """Turn off transformers' and datasets' progress bars and transformers' logging below errors.

    Only the libraries that are installed are imported, and only their light logging / tqdm modules
    (neither imports torch)."""
    if importlib.util.find_spec("transformers") is not None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # also the Hugging Face Hub's download bars
        hf_logging.set_verbosity_error()
    if importlib.util.find_spec("datasets") is not None:
        import datasets

        datasets.disable_progress_bars()
    # On CPUs with AVX512-BF16, importing bitsandbytes warns that the optional `kernels` package (a faster
    # fused 4-bit kernel fetched from the Hub, unreachable here) is missing; its own kernel runs instead.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def configure() -> None:
    """Set up a notebook's stderr: call once in the import cell (idempotent)."""
    warnings.formatwarning = format_warning
    silence_library_deprecations()
    quiet_hf_libraries()


def progress(iterable: Iterable[Any] | None = None, *, total: float | None = None, desc: str | None = None,
             file: TextIO | None = None, **kwargs: Any) -> Any:
    """A tqdm.auto bar for medkit's loops (same arguments as ``tqdm``); disabled when :func:`headless`,
    whatever ``disable`` the caller passed, so executed notebooks carry no bar."""
    from tqdm.auto import tqdm

    if headless():
        kwargs["disable"] = True
    return tqdm(iterable, total=total, desc=desc, file=file, **kwargs)
