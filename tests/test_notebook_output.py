"""What notebooks print to stderr: notebook_output.configure(), its warning format and the headless bars."""

import io
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from medkit import notebook_output as NO
from medkit import pipeline, qgen
from medkit.errors import MedkitError
from medkit.paths import REPO_ROOT

TARGETED = "`is_gradient_checkpointing` is deprecated and will be removed in v6. Use `is_activation_checkpointing` instead."
# the kit's own argument: fixed in medkit.sft, so it must stay visible if it ever comes back
UNRELATED = "`gradient_checkpointing` is deprecated and will be removed in v6. Use `activation_checkpointing` instead."


@pytest.fixture
def restored(monkeypatch):
    """configure() changes process-wide state: put warnings, transformers and datasets back afterwards."""
    import datasets as ds_tqdm
    from transformers.utils import logging as hf_logging

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    bars, verbosity, ds_bars = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity(), ds_tqdm.are_progress_bars_disabled()
    with warnings.catch_warnings():
        yield
    (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()
    hf_logging.set_verbosity(verbosity)
    (ds_tqdm.disable_progress_bars if ds_bars else ds_tqdm.enable_progress_bars)()


def _emit(message: str, module: str) -> list[str]:
    """The messages recorded after warning ``message`` as if raised in ``module`` (filters applied)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.warn_explicit(message, FutureWarning, f"/somewhere/{module.replace('.', '/')}.py", 3303,
                               module=module, registry={})
    return [str(w.message) for w in seen]


def test_configure_silences_the_library_deprecation_only(restored):
    warnings.simplefilter("always")
    assert _emit(TARGETED, "transformers.modeling_utils") == [TARGETED]  # shown before: the test can fail
    NO.configure()
    assert _emit(TARGETED, "transformers.modeling_utils") == []
    assert _emit(UNRELATED, "transformers.training_args") == [UNRELATED]
    assert _emit("something else is deprecated", "transformers.modeling_utils") == ["something else is deprecated"]
    # the same text raised from elsewhere (e.g. the kit's own code) is not hidden either
    assert _emit(TARGETED, "medkit.sft") == [TARGETED]


def test_the_filter_matches_the_installed_transformers_warning(restored):
    """The real property, as peft and trl call it: the regex must match what the library raises."""
    from transformers.modeling_utils import PreTrainedModel

    class Model:
        is_activation_checkpointing = False

    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as before:
        PreTrainedModel.is_gradient_checkpointing.fget(Model())
    assert [w.category for w in before] == [FutureWarning]
    NO.configure()
    with warnings.catch_warnings(record=True) as after:
        PreTrainedModel.is_gradient_checkpointing.fget(Model())
    assert after == []


def test_configure_quiets_transformers_and_datasets(restored):
    import datasets as ds_tqdm
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    ds_tqdm.enable_progress_bars()
    NO.configure()
    assert not hf_logging.is_progress_bar_enabled() and ds_tqdm.are_progress_bars_disabled()
    assert hf_logging.get_verbosity() == hf_logging.ERROR


def test_warning_format_is_one_portable_line():
    site = "/opt/env/lib/python3.11/site-packages/torch/autograd/graph.py"
    line = NO.format_warning(UserWarning("a kernel was not registered.\n  This may be wrong."), UserWarning,
                             site, 979, "return Variable._execution_engine.run_backward(")
    assert line == ("<site-packages>/torch/autograd/graph.py:979: UserWarning: a kernel was not registered. "
                    "This may be wrong.\n")
    mine = NO.format_warning("careful", FutureWarning, str(REPO_ROOT / "medkit" / "sft.py"), 12)
    assert mine == "medkit/sft.py:12: FutureWarning: careful\n" and str(REPO_ROOT) not in mine


def test_configured_warnings_reach_stderr_on_one_line():
    """In a fresh interpreter (pytest records warnings itself): what a notebook's stderr would show."""
    code = ("import warnings; from medkit import notebook_output as NO; from medkit.paths import REPO_ROOT\n"
            "NO.configure(); warnings.simplefilter('always')\n"
            "warnings.warn_explicit('two\\nlines', UserWarning, str(REPO_ROOT / 'medkit' / 'x.py'), 5, module='medkit.x')\n")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT).stderr
    assert err == "medkit/x.py:5: UserWarning: two lines\n"
    assert str(REPO_ROOT) not in err and str(Path.home()) not in err


def test_progress_is_off_headless_and_on_otherwise(monkeypatch):
    monkeypatch.setenv(NO.HEADLESS_ENV, "1")
    out = io.StringIO()
    bar = NO.progress(range(3), desc="x", disable=False, file=out)  # the caller's disable=False is overridden
    assert NO.headless() and bar.disable and list(bar) == [0, 1, 2] and out.getvalue() == ""
    monkeypatch.delenv(NO.HEADLESS_ENV)
    bar = NO.progress(range(3), desc="x", file=out)
    assert not NO.headless() and not bar.disable and list(bar) == [0, 1, 2] and "x: 100%" in out.getvalue()
    assert NO.progress(range(3), disable=True, file=out).disable  # a caller can still turn it off


def test_the_kits_bars_follow_headless(monkeypatch, tmp_path, capsys):
    """qgen.run's bar goes through notebook_output.progress: nothing on stderr headless."""
    jobs = [(f"s{i}", 0, {}) for i in range(3)]
    make = lambda seed, attempt, kw: {"seed": seed, "attempt": attempt}  # noqa: E731
    monkeypatch.delenv(NO.HEADLESS_ENV, raising=False)
    qgen.run(tmp_path / "a.jsonl", jobs, make, desc="questions")
    assert "questions: 100%" in capsys.readouterr().err
    monkeypatch.setenv(NO.HEADLESS_ENV, "1")
    assert len(qgen.run(tmp_path / "b.jsonl", jobs, make, desc="questions")) == 3
    assert capsys.readouterr().err == ""


def test_run_notebook_starts_the_kernel_headless(monkeypatch, tmp_path):
    import papermill

    seen = []

    def fake_execute(*args, **kwargs):
        import os

        seen.append(os.environ.get(NO.HEADLESS_ENV))
        raise RuntimeError("no kernel in this test")

    monkeypatch.delenv(NO.HEADLESS_ENV, raising=False)
    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    monkeypatch.setattr(pipeline, "check_pair", lambda path: None)  # whatever state the pair is in
    with pytest.raises(MedkitError, match="did not finish"):
        pipeline.run_notebook(pipeline.numbered_notebooks()[0], "smoke", tmp_path)
    assert seen == ["1"]
    import os

    assert NO.HEADLESS_ENV not in os.environ  # set for the kernel only, not left in this process


def test_the_kit_passes_the_non_deprecated_checkpointing_argument(tmp_path):
    from medkit import profiles, sft

    p = profiles.resolve("smoke", "sft", GRADIENT_CHECKPOINTING=True)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cfg = sft.sft_config(p, tmp_path, use_cpu=True)
    assert cfg.activation_checkpointing and cfg.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert [str(w.message) for w in seen if "checkpointing" in str(w.message)] == []
