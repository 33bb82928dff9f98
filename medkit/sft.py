"""Supervised fine-tuning on the trajectories: QLoRA / LoRA with TRL, loss on assistant tokens only.

Scope (notebook 05):

* :func:`load_trajectories` reads notebook 04's TRL rows with clear errors (file, line,
  field) for empty or malformed files.
* :func:`training_template` is TRL's Qwen2.5 *training* chat template: the same rendering as
  the agent's text protocol (tools in the system prompt, ``<tool_call>`` / ``<tool_response>``)
  plus ``{% generation %}`` markers, so ``assistant_only_loss`` masks system, user and tool
  turns. :func:`label_view` shows which tokens of a real rendered trajectory carry loss.
* :func:`curriculum_order` puts the rows in training order (seeded shuffle; shortest chains first
  with ``CURRICULUM="hops"``), which the trainer then keeps; :func:`training_rows` is the whole
  selection from the SFT parameters (order, tool-schema block, budget, length).
* :func:`length_report` counts tokens per trajectory and how many exceed ``max_length``
  (they are truncated by TRL — reported, never silent).
* :func:`build_trainer` wires :class:`trl.SFTTrainer` with a peft LoRA adapter on the
  profile's model: 4-bit nf4 QLoRA (bitsandbytes, CPU or CUDA), plain LoRA, or unsloth on a
  CUDA machine where it is installed (:func:`medkit.model.select_backend`; never imported
  otherwise). :func:`train` resumes from the last checkpoint in the output folder.
* :func:`curve_steps` / :func:`snapshot_callback` / :func:`snapshots`: the adapter as it stood
  after given shares of training (e.g. 25%, 50%, 100%), saved while training runs, so notebook 05
  can show held-out accuracy growing with data (the learning curve).
* :func:`save_outputs` writes the adapter, a merged full-precision model (a QLoRA adapter folded
  into the dequantized 4-bit weights it was trained on, :func:`merge_adapter`) and a model
  card with data, parameters and metrics.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from . import records
from .adapters import ADAPTER_META, adapter_meta, load_for_inference
from .errors import ConfigError, InputError
from .io import write_json, write_text
from .paths import portable


# --------------------------------------------------------------------------- data


def load_trajectories(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """TRL rows of ``trajectories.jsonl``, validated (:func:`medkit.records.load_trajectories`), the first
    ``limit`` ones if given."""
    rows = records.load_trajectories(path)
    return rows[:limit] if limit else rows


def training_template() -> str:
    """TRL's Qwen2.5 training template (``{% generation %}`` markers around assistant output), except that an
    assistant message with ``"weight": 0`` (OpenAI's fine-tuning convention; a recovery turn's slip,
    :mod:`medkit.recovery`) is rendered the same but outside the markers, so it carries no loss."""
    from trl.chat_template_utils import qwen2_5_training_chat_template as trl_template

    start, end = "{%- generation %}", "{%- endgeneration %}"
    if trl_template.count(start) != 1 or trl_template.count(end) != 1:
        raise ConfigError("TRL's Qwen2.5 training template changed: expected one {% generation %} block")
    head, rest = trl_template.split(start)
    body, tail = rest.split(end)
    assistant = ("{%- if message.weight is not none and message.weight == 0 %}" + body
                 + "{%- else %}" + start + body + end + "{%- endif %}")
    return head + assistant + tail


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Give the tokenizer the training template and a pad token (ChatML tokenizers only)."""
    if "<|im_start|>" not in tokenizer.get_vocab():
        raise ConfigError("the kit's chat template is ChatML (<|im_start|> / <|im_end|>); this tokenizer lacks them")
    tokenizer.chat_template = training_template()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _tools(row: dict[str, Any]) -> list[dict[str, Any]]:
    return json.loads(row["tools"]) if isinstance(row["tools"], str) else row["tools"]


def encode(tokenizer: Any, row: dict[str, Any]) -> dict[str, list[int]]:
    """Token ids and the assistant mask of one row, exactly as TRL's SFT tokenisation makes them."""
    out = tokenizer.apply_chat_template(row["messages"], tools=_tools(row), chat_template=training_template(),
                                        tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    return {"input_ids": list(out["input_ids"]), "assistant_masks": list(out["assistant_masks"])}


def label_view(tokenizer: Any, row: dict[str, Any]) -> tuple[str, str]:
    """(text that carries loss, text that is masked) of one row, for inspection and tests."""
    enc = encode(tokenizer, row)
    trained = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    masked = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if not m]
    return tokenizer.decode(trained), tokenizer.decode(masked)


def length_report(tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> dict[str, Any]:
    """Tokens per row, trained (assistant) tokens, and how many rows ``max_length`` truncates."""
    lengths, trained = [], []
    for row in rows:
        enc = encode(tokenizer, row)
        lengths.append(len(enc["input_ids"]))
        trained.append(sum(enc["assistant_masks"]))
    over = [n for n in lengths if n > max_length]
    return {"rows": len(rows), "tokens": sum(lengths), "mean_tokens": round(sum(lengths) / max(len(rows), 1), 1),
            "max_tokens": max(lengths, default=0), "trained_tokens": sum(trained),
            "trained_share": round(sum(trained) / max(sum(lengths), 1), 3), "max_length": max_length,
            "truncated_rows": len(over), "truncated_tokens": sum(n - max_length for n in over)}


def without_tool_schemas(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with an empty tool list: the system prompt keeps its instructions, not the schemas.

    The system prompt keeps :data:`medkit.agent.TOOLS_TEXT` (one line per tool with its typed
    arguments, ~150 tokens), so the model still sees every tool; the ~840-token JSON schema block
    would otherwise be the largest part of a compact training sequence. The agent
    must then run with ``schemas=[]`` too, so it sees the prompt it was trained on.
    """
    return [{**r, "tools": "[]"} for r in rows]


def select_rows(tokenizer: Any, rows: list[dict[str, Any]], n: int | None, max_length: int, *,
                drop_longer: bool) -> tuple[list[dict[str, Any]], int]:
    """The first ``n`` rows (all if None), skipping those over ``max_length`` tokens if ``drop_longer``.

    Returns (rows, number skipped). Truncating a trajectory cuts off its answer, so on a tight
    length budget it is better to train on the trajectories that fit; without ``drop_longer`` the
    long ones stay and are truncated by TRL (counted by :func:`length_report`).
    """
    if not drop_longer:
        return (rows[:n] if n else list(rows)), 0
    kept, skipped = [], 0
    for row in rows:
        if n and len(kept) >= n:
            break
        if len(encode(tokenizer, row)["input_ids"]) > max_length:
            skipped += 1
        else:
            kept.append(row)
    return kept, skipped


def training_rows(tokenizer: Any, rows: list[dict[str, Any]], params: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """The rows notebook 05 trains on, from all of notebook 04's rows and the SFT parameters: in
    :func:`curriculum_order` (``CURRICULUM``, ``SEED``, ``TRAIN_MAX_HOPS``), without the tool-schema block
    unless ``TOOLS_IN_PROMPT`` (:func:`without_tool_schemas`), the first ``N_TRAIN`` that fit ``MAX_LENGTH``
    with ``DROP_LONGER`` (:func:`select_rows`). Returns (rows, number skipped as too long)."""
    ordered = curriculum_order(rows, params["CURRICULUM"], params["SEED"], max_hops=params["TRAIN_MAX_HOPS"])
    if not params["TOOLS_IN_PROMPT"]:
        ordered = without_tool_schemas(ordered)
    return select_rows(tokenizer, ordered, params["N_TRAIN"], params["MAX_LENGTH"], drop_longer=params["DROP_LONGER"])


CURRICULA = ("none", "hops", "mixed")  # the training orders :func:`curriculum_order` knows


def curriculum_order(rows: list[dict[str, Any]], curriculum: str | None, seed: int, *,
                     max_hops: int | None = None) -> list[dict[str, Any]]:
    """The rows in the order training sees them: a seeded shuffle (``"none"`` / None); with ``"hops"``
    the shuffle stably sorted by hop count — the shortest chains first, mixed within each hop count;
    with ``"mixed"`` the hop counts taken in turn (2, 3, …, 2, 3, …), so any budget holds every hop
    count in equal shares until the rarer ones run out.

    With a budget (``N_TRAIN``) below the data, the first rows are the ones trained on, so ``"hops"``
    chooses only the shortest chains and ``"mixed"`` an even mix; :func:`sft_config` keeps this order
    (a sequential sampler) when a curriculum is set, and TRL's random sampler otherwise.
    ``max_hops`` drops longer chains first (``TRAIN_MAX_HOPS``; None keeps all).
    """
    import random

    if curriculum not in (None, *CURRICULA):
        raise ConfigError(f"CURRICULUM must be one of {CURRICULA}, got {curriculum!r}")
    out = list(rows)
    random.Random(seed).shuffle(out)
    if curriculum in ("hops", "mixed") or max_hops is not None:
        bad = [i for i, r in enumerate(out) if isinstance(r.get("hops"), bool) or not isinstance(r.get("hops"), int)]
        if bad:
            raise InputError(None, f"{len(bad)} of {len(out)} trajectories have no integer hop count "
                             "(a curriculum by hops or TRAIN_MAX_HOPS needs it; use CURRICULUM='none')", field="hops")
    if max_hops is not None:
        out = [r for r in out if r["hops"] <= max_hops]
    if curriculum == "hops":
        out.sort(key=lambda r: r["hops"])
    elif curriculum == "mixed":
        by_hops: dict[int, list[dict[str, Any]]] = {}
        for r in out:
            by_hops.setdefault(r["hops"], []).append(r)
        queues = [by_hops[h] for h in sorted(by_hops)]
        out = [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]
    return out


def to_train_dataset(rows: list[dict[str, Any]]) -> Any:
    """A datasets.Dataset with ``messages`` (JSON-typed, heterogeneous tool arguments intact) and ``tools``."""
    from .trajectories import to_dataset

    return to_dataset([{**r, "question_id": str(r.get("question_id", i))} for i, r in enumerate(rows)])


# --------------------------------------------------------------------------- training


def lora_config(params: dict[str, Any]) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=int(params["LORA_R"]), lora_alpha=int(params["LORA_ALPHA"]),
                      lora_dropout=float(params["LORA_DROPOUT"]), target_modules="all-linear",
                      bias="none", task_type="CAUSAL_LM")


def gradient_checkpointing(setting: bool | None, *, use_cpu: bool) -> bool:
    """Recompute activations in the backward pass: an explicit ``setting`` wins; None means on a GPU only."""
    return (not use_cpu) if setting is None else bool(setting)


def checkpointing_args(setting: bool | None, *, use_cpu: bool) -> dict[str, Any]:
    """The trainer arguments for :func:`gradient_checkpointing` (SFT's and GRPO's configs share them):
    non-reentrant checkpointing, which needs no inputs that require grad under a frozen, adapted base.
    Named ``activation_checkpointing*`` where transformers has them (5.x deprecates ``gradient_checkpointing*``,
    which then only alias them and warn); the old names on older releases."""
    import dataclasses

    from transformers import TrainingArguments

    name = ("activation_checkpointing" if "activation_checkpointing" in
            {f.name for f in dataclasses.fields(TrainingArguments)} else "gradient_checkpointing")
    return {name: gradient_checkpointing(setting, use_cpu=use_cpu), f"{name}_kwargs": {"use_reentrant": False}}


def sft_config(params: dict[str, Any], output_dir: str | Path, *, use_cpu: bool) -> Any:
    """TRL's SFTConfig from the notebook parameters (``BF16`` None: where the hardware has it)."""
    from trl import SFTConfig

    from .model import use_bf16
    from .notebook_output import headless

    return SFTConfig(
        output_dir=str(output_dir), seed=int(params["SEED"]), data_seed=int(params["SEED"]),
        num_train_epochs=float(params["EPOCHS"]), max_steps=int(params.get("MAX_STEPS") or -1),
        per_device_train_batch_size=int(params["BATCH_SIZE"]),
        gradient_accumulation_steps=int(params["GRAD_ACCUM"]), learning_rate=float(params["LEARNING_RATE"]),
        lr_scheduler_type="cosine", warmup_steps=int(params.get("WARMUP_STEPS") or 0),
        max_length=int(params["MAX_LENGTH"]), assistant_only_loss=True, packing=False,
        # a curriculum (curriculum_order) is an order: keep it; otherwise TRL shuffles
        train_sampling_strategy="random" if params.get("CURRICULUM") in (None, "none") else "sequential",
        **checkpointing_args(params.get("GRADIENT_CHECKPOINTING"), use_cpu=use_cpu),
        use_cpu=use_cpu, bf16=use_bf16(params.get("BF16"), on_cuda=not use_cpu), logging_steps=1, save_strategy="steps",
        save_steps=int(params["SAVE_STEPS"]), save_total_limit=2, report_to="none",
        dataloader_num_workers=0, dataset_num_proc=None, disable_tqdm=headless(),  # headless: no bar widget, logs printed
    )


def with_adapter(model: Any, params: dict[str, Any], backend: str) -> tuple[Any, Any]:
    """(model, peft_config for the trainer): unsloth wraps the model itself; otherwise TRL adds the adapter.

    ``backend`` is :func:`medkit.model.select_backend`'s choice; unsloth is imported only for it.
    """
    from .model import BACKEND_UNSLOTH

    if backend == BACKEND_UNSLOTH:
        from unsloth import FastLanguageModel  # GPU only

        wrapped = FastLanguageModel.get_peft_model(
            model, r=int(params["LORA_R"]), lora_alpha=int(params["LORA_ALPHA"]),
            lora_dropout=float(params["LORA_DROPOUT"]), bias="none", random_state=int(params["SEED"]),
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            use_gradient_checkpointing="unsloth")
        return wrapped, None
    return model, lora_config(params)


def build_trainer(model: Any, tokenizer: Any, rows: list[dict[str, Any]], params: dict[str, Any],
                  output_dir: str | Path, *, use_cpu: bool = True, peft_config: Any = None) -> Any:
    """An SFTTrainer over ``rows`` with a LoRA adapter (``peft_config`` None: from ``params``)."""
    from trl import SFTTrainer

    prepare_tokenizer(tokenizer)
    return SFTTrainer(model=model, args=sft_config(params, output_dir, use_cpu=use_cpu),
                      train_dataset=to_train_dataset(rows), processing_class=tokenizer,
                      peft_config=peft_config if peft_config is not None else lora_config(params))


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete ``checkpoint-N`` folder (with trainer state), or None."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return str(max(done, key=lambda p: int(p.name.split("-")[-1]))) if done else None


def target_steps(trainer: Any) -> int:
    """Optimizer steps the run will take (``max_steps``, or epochs x update steps per epoch)."""
    args = trainer.args
    if args.max_steps and args.max_steps > 0:
        return int(args.max_steps)
    batches = math.ceil(len(trainer.train_dataset) / args.per_device_train_batch_size)
    per_epoch = max(math.ceil(batches / args.gradient_accumulation_steps), 1)
    return int(math.ceil(per_epoch * args.num_train_epochs))


def _checkpoint_step(ckpt: str) -> int:
    return int(Path(ckpt).name.split("-")[-1])


def _restore_finished(trainer: Any, ckpt: str) -> None:
    """Load a finished run's adapter weights and trainer state instead of training again."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerState

    weights = Path(ckpt) / "adapter_model.safetensors"
    if not weights.exists():
        raise InputError(weights, "the last checkpoint has no adapter weights; delete the folder and train again")
    set_peft_model_state_dict(trainer.model, load_file(str(weights)))
    trainer.state = TrainerState.load_from_json(str(Path(ckpt) / "trainer_state.json"))


def train(trainer: Any, *, resume: bool = True) -> dict[str, Any]:
    """Train (resuming from the last checkpoint when there is one); wall time and loss curve.

    A checkpoint that already reached the run's last step is loaded, not trained further (the
    HF Trainer would otherwise take one more step on resume), so rerunning a finished notebook
    changes nothing.
    """
    ckpt = last_checkpoint(trainer.args.output_dir) if resume else None
    t0 = time.time()
    finished = ckpt is not None and _checkpoint_step(ckpt) >= target_steps(trainer)
    if finished:
        _restore_finished(trainer, ckpt)
    else:
        try:
            trainer.train(resume_from_checkpoint=ckpt)
        except RuntimeError as e:
            if "out of memory" in str(e).lower():
                raise ConfigError("out of memory during training: lower BATCH_SIZE or MAX_LENGTH, or use QLoRA "
                                  "(QUANTIZE=nf4)") from None
            raise
    seconds = time.time() - t0
    logs = [h for h in trainer.state.log_history if "loss" in h]
    losses = [float(h["loss"]) for h in logs]
    if any(math.isnan(x) for x in losses):
        raise ConfigError("the training loss became NaN: lower LEARNING_RATE")
    return {"seconds": round(seconds, 1), "resumed_from": portable(ckpt), "already_finished": finished,
            "steps": trainer.state.global_step,
            "steps_this_run": trainer.state.global_step - (_checkpoint_step(ckpt) if ckpt else 0),
            "train_loss": round(sum(losses) / len(losses), 4) if losses else None,
            "loss_curve": [{"step": int(h["step"]), "loss": float(h["loss"])} for h in logs]}


def save_outputs(trainer: Any, tokenizer: Any, out_dir: str | Path, card: dict[str, Any], *,
                 profile: str | None = None) -> dict[str, str]:
    """Adapter (+ tokenizer), README model card and, with ``profile``, a merged model under ``out_dir``.

    The merged model is full precision: a QLoRA adapter is folded into the dequantized 4-bit
    weights it was trained on (:func:`merge_adapter`), a LoRA adapter into the original weights.
    """
    out = Path(out_dir)
    adapter = out / "adapter"
    trainer.model.save_pretrained(str(adapter))
    tokenizer.save_pretrained(str(adapter))
    params = card.get("parameters", {})
    write_json(adapter / ADAPTER_META, adapter_meta(params, profile=profile, base_model=card.get("base_model")))
    paths = {"adapter": str(adapter)}
    if profile is not None:
        merged_dir = out / "merged"
        merged, _ = load_for_inference(profile, adapter, bf16=False)
        merged.save_pretrained(str(merged_dir))
        tokenizer.save_pretrained(str(merged_dir))
        paths["merged"] = str(merged_dir)
    write_json(out / "card.json", card)
    write_text(out / "README.md", model_card(card))
    return paths


def model_card(card: dict[str, Any]) -> str:
    """A short markdown model card: what was trained on what, how, and how well."""
    lines = [f"# {card.get('name', 'medkit SFT adapter')}", "",
             card.get("summary", "LoRA adapter trained with medkit notebook 05 (TRL SFT, assistant-only loss)."), "",
             "## Data", "", f"- {card.get('data', '')}", "", "## Parameters", ""]
    lines += [f"- `{k}` = `{v}`" for k, v in sorted(card.get("parameters", {}).items())]
    lines += ["", "## Metrics", ""]
    lines += [f"- {k}: {json.dumps(v)}" for k, v in sorted(card.get("metrics", {}).items())]
    return "\n".join(lines) + "\n"
