"""Can this checkpoint directory be loaded for inference as it stands, and if not, why?

The check runs at every save, so it is cheap on purpose: it works from the file listing a
directory scan already collected, and opens only small files (``config.json``, index JSONs,
``adapter_config.json``, ``tokenizer_config.json``) plus the header of each ``*.safetensors`` file,
read by safetensors itself (the library transformers loads them with). It never reads tensor data
and never imports torch or transformers. It never raises: anything unreadable or malformed becomes
a reason.

Reasons come out in a fixed order (configuration, weights or layout, safetensors files in path
order, tokenizer), each once, so the same directory always gives the same answer.

Rules, and why:

* **Layout.** ``adapter_config.json`` makes a PEFT adapter (transformers itself loads such a
  directory as an adapter); so do adapters saved under their own names (``<name>/adapter_config.json``,
  how PEFT saves an adapter not called ``default``), each judged on its own. Otherwise, consolidated weights (``model.safetensors``,
  ``pytorch_model.bin`` or their ``*.index.json``) make a Transformers checkpoint, or an
  accelerate ``save_state`` one when ``config.json`` is missing and accelerate's own files are
  there. Without consolidated weights: DeepSpeed ZeRO shards, FSDP sharded state dicts (DCP
  folders or per-rank ``pytorch_model_fsdp*_rank<r>.bin``), accelerate ``save_state`` files (weights
  missing, unless FSDP's full ``pytorch_model_fsdp.bin`` is there), ``config.json`` alone
  (Transformers, weights missing), bare ``torch.save`` files (not the Trainer's own state files:
  ``optimizer.pt``, ``scheduler.pt``, ``scaler.pt``, ``rng_state*.pth``), in that order; else "unknown".
* **Model type.** Given the model types transformers knows (``known_model_types``; the recorder passes
  transformers' own), a ``config.json`` whose ``model_type`` is not one of them does not load through the
  ``Auto*`` classes as it stands, so it is not ready, and the reason says what loads it: with ``auto_map``,
  ``trust_remote_code=True`` (and whether the code it names is in the checkpoint); without, its own class.
  Ready means ``AutoModel*.from_pretrained(path)`` loads it with no further option.
* **Weights.** Judged the way ``from_pretrained`` picks them: the first of ``model.safetensors``,
  ``model.safetensors.index.json``, ``pytorch_model.bin``, ``pytorch_model.bin.index.json`` that
  exists (or the file ``config.json`` names in ``transformers_weights``) is the one that is loaded,
  so that one must be complete: every shard of an index present, no empty ``.bin`` file.
* **Safetensors.** Every ``*.safetensors`` file, subdirectories included (PEFT keeps extra
  adapters there), must open with safetensors' own reader: a header that parses, tensors whose
  data is consistent with their dtype and shape, and data that ends exactly at the file size.
* **Tokenizer.** See :func:`needs_tokenizer` and :func:`has_tokenizer`. A PEFT adapter does not
  need its own tokenizer: inference loads the base model from ``base_model_name_or_path`` and the
  base model's tokenizer comes from the same place. The exception is an adapter that trains the
  input embeddings (``trainable_token_indices``, or an embedding layer in ``modules_to_save``),
  which is how PEFT adds tokens: then the base tokenizer may not match, so the adapter's own is
  required.
* **Base model.** An adapter whose ``base_model_name_or_path`` is a local path (absolute, ``./``,
  ``../``, ``~``, or more than one ``/``, which no Hub id has) that does not exist is not ready: nothing
  could load its base. A Hub id is not looked up (no network).
* Not checked: that a Hub base model exists, that ``.bin``/``.pt`` pickles unpickle, and image-only
  models' image processors.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from safetensors import SafetensorError, safe_open

from .loading import local_model_path, model_type_reasons

__all__ = [
    "LAYOUTS",
    "Readiness",
    "adapter_folders",
    "assess_readiness",
    "has_tokenizer",
    "needs_tokenizer",
]

#: Every value ``Readiness.layout`` can take.
LAYOUTS = (
    "transformers",
    "peft-adapter",
    "deepspeed-zero",
    "fsdp-sharded",
    "accelerate-state",
    "torch-save",
    "unknown",
)


@dataclass(frozen=True)
class Readiness:
    """Whether a checkpoint loads for inference as it stands; ``reasons`` say why not."""

    ready: bool
    reasons: tuple[str, ...]
    layout: str


#: Consolidated weights in the order ``from_pretrained`` looks for them: (file, is an index).
_WEIGHTS_CANDIDATES: tuple[tuple[str, bool], ...] = (
    ("model.safetensors", False),
    ("model.safetensors.index.json", True),
    ("pytorch_model.bin", False),
    ("pytorch_model.bin.index.json", True),
)
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")

#: Architecture name endings of heads that take text in or put text out.
TEXT_HEAD_SUFFIXES = (
    "ForCausalLM",
    "ForMaskedLM",
    "ForSeq2SeqLM",
    "ForConditionalGeneration",
    "ForSequenceClassification",
    "ForTokenClassification",
    "ForQuestionAnswering",
    "ForMultipleChoice",
    "ForNextSentencePrediction",
    "LMHeadModel",
)
#: Files a ``tokenizer_config.json`` needs one of to be a loadable slow or fast tokenizer.
_VOCAB_FILES = frozenset(
    {
        "vocab.json",
        "vocab.txt",
        "tokenizer.model",
        "spiece.model",
        "sentencepiece.model",
        "sentencepiece.bpe.model",
        "spm.model",
        "source.spm",
        "target.spm",
        "vocab.model",
    }
)
_PROCESSOR_FILES = frozenset({"processor_config.json", "preprocessor_config.json"})
#: Tokenizers that work on bytes or characters and so save no vocabulary file.
_VOCABLESS_TOKENIZERS = frozenset({"ByT5Tokenizer", "CanineTokenizer", "PerceiverTokenizer"})

_TORCH_SAVE_SUFFIXES = (".pt", ".pth", ".ckpt")
#: The Trainer's own state files beside the model (resuming needs them; they are no model).
_TRAINER_STATE_FILE = re.compile(r"^(?:optimizer|scheduler|scaler)\.pt$|^rng_state(?:_\d+)?\.pth$")
_DEEPSPEED_SHARD = re.compile(r"(?:^|[-_])(?:model_states|optim_states)\.pt$")
#: FSDP through accelerate: per-rank shards (``LOCAL_STATE_DICT``, or sharded without DCP), and the full
#: state dict (``FULL_STATE_DICT``: whole weights, but a bare state dict for ``load_state``).
_FSDP_RANK_FILE = re.compile(r"^pytorch_model_fsdp(?:_\d+)?_rank\d+\.bin$")
_FSDP_FULL_FILE = re.compile(r"^pytorch_model_fsdp(?:_\d+)?\.bin$")
_ACCELERATE_FILE = re.compile(
    r"^(?:optimizer(?:_\d+)?\.bin|scheduler(?:_\d+)?\.bin|sampler(?:_\d+)?\.bin"
    r"|random_states_\d+\.pkl|custom_checkpoint_\d+\.pkl|dl_state_dict(?:_\d+)?\.bin)$"
)
#: Input-embedding module names: training them in ``modules_to_save`` is how PEFT adds tokens.
_EMBEDDING_NAMES = frozenset({"wte", "shared", "tok_embeddings", "word_embeddings", "embed_tokens"})

#: Largest JSON file read; real index files stay far below (a 600B-parameter index is ~10 MB).
_MAX_JSON_BYTES = 64 * 1024 * 1024

_DEEPSPEED_REASON = "DeepSpeed ZeRO shards without consolidated weights (run zero_to_fp32.py)"
_FSDP_REASON = "FSDP sharded state dict without consolidated weights (merge it with accelerate merge-weights)"
_ACCELERATE_REASON = "accelerate save_state output is not a from_pretrained checkpoint (use save_pretrained)"
_MISSING_WEIGHTS = "missing model weights"
_MISSING_TOKENIZER = "missing tokenizer"


def assess_readiness(
    directory: pathlib.Path, files: Mapping[str, int], known_model_types: Container[str] | None = None
) -> Readiness:
    """Judge ``directory`` from its scanned ``files`` (POSIX relative path -> size in bytes).

    ``known_model_types``: the ``model_type`` values the ``Auto*`` classes load (transformers'
    ``CONFIG_MAPPING``); None leaves the model type unchecked. Never raises: a failure of the check
    itself is reported as a reason, not ready.
    """
    try:
        return _assess(pathlib.Path(directory), _normalise(files), known_model_types)
    except Exception as exc:  # the contract is "never raises"; say so instead of guessing
        return Readiness(False, (f"readiness could not be checked ({type(exc).__name__})",), "unknown")


def adapter_folders(files: Iterable[str]) -> list[str]:
    """The PEFT adapters a checkpoint holds, as folder prefixes: ``""`` for ``adapter_config.json`` at the
    top, ``"<name>/"`` for one saved under its own adapter name; sorted."""
    folders = set()
    for name in files:
        if name == "adapter_config.json":
            folders.add("")
        elif name.count("/") == 1 and name.endswith("/adapter_config.json"):
            folders.add(name[: -len("adapter_config.json")])
    return sorted(folders)


def needs_tokenizer(config: Mapping[str, Any]) -> bool:
    """Whether the model of ``config`` takes or gives text, and so needs a tokenizer or processor.

    True when an architecture ends in a text head (:data:`TEXT_HEAD_SUFFIXES`), when the config
    has a positive ``vocab_size`` (only models with token embeddings have one: vision-only models
    such as ViT do not), or when it has a ``text_config`` (multimodal models with a text side).
    """
    architectures = config.get("architectures")
    if isinstance(architectures, list) and any(
        isinstance(name, str) and name.endswith(TEXT_HEAD_SUFFIXES) for name in architectures
    ):
        return True
    vocab_size = config.get("vocab_size")
    if isinstance(vocab_size, int) and not isinstance(vocab_size, bool) and vocab_size > 0:
        return True
    return isinstance(config.get("text_config"), Mapping)


def has_tokenizer(directory: pathlib.Path, top_level: Iterable[str]) -> bool:
    """Whether the top-level files hold a loadable tokenizer or processor.

    Accepted: ``tokenizer.json`` (a complete fast tokenizer); ``tokenizer_config.json`` with a
    vocabulary file (``vocab.json``, ``vocab.txt``, ``tokenizer.model``, ``spiece.model``,
    ``*.tiktoken`` ...) or naming a tokenizer that needs none (ByT5, CANINE, Perceiver); or
    ``processor_config.json`` / ``preprocessor_config.json``, which speech and multimodal
    checkpoints load through ``AutoProcessor``.
    """
    names = set(top_level)
    if "tokenizer.json" in names or names & _PROCESSOR_FILES:
        return True
    if "tokenizer_config.json" not in names:
        return False
    if names & _VOCAB_FILES or any(name.endswith(".tiktoken") for name in names):
        return True
    tokenizer_config, _ = _read_json(directory, "tokenizer_config.json")
    return (
        isinstance(tokenizer_config, dict)
        and tokenizer_config.get("tokenizer_class") in _VOCABLESS_TOKENIZERS
    )


def _normalise(files: Mapping[str, int]) -> dict[str, int]:
    """Relative POSIX paths without a leading ``./``, sizes as ints (-1 when unusable)."""
    normalised: dict[str, int] = {}
    for name, size in files.items():
        path = str(name)
        while path.startswith("./"):
            path = path[2:]
        try:
            normalised[path] = int(size)
        except (TypeError, ValueError, OverflowError):
            normalised[path] = -1
    return normalised


def _assess(
    directory: pathlib.Path, files: dict[str, int], known_model_types: Container[str] | None
) -> Readiness:
    top = {name for name in files if "/" not in name}
    adapters = adapter_folders(files)
    if "adapter_config.json" in top or (adapters and "config.json" not in top):
        return _assess_adapters(directory, files, top, adapters)

    reasons: list[str] = []
    config: dict[str, Any] | None = None
    if "config.json" in top:
        config = _read_config(directory, files.get("config.json", -1), reasons)
    else:
        reasons.append("missing config.json")
    if config is not None and known_model_types is not None:
        reasons.extend(model_type_reasons(config, top, known_model_types))

    weights_file = _selected_weights(config, files)
    accelerate = any(_ACCELERATE_FILE.match(name) for name in top)
    if weights_file is not None:
        if accelerate and "config.json" not in top:
            layout = "accelerate-state"
            reasons.append(_ACCELERATE_REASON)
        else:
            layout = "transformers"
        reasons.extend(_weights_reasons(directory, files, weights_file))
    elif _has_deepspeed_shards(files, top):
        layout = "deepspeed-zero"
        reasons.append(_DEEPSPEED_REASON)
    elif _has_fsdp_shards(files):
        layout = "fsdp-sharded"
        reasons.append(_FSDP_REASON)
    elif accelerate and "config.json" not in top:
        layout = "accelerate-state"
        if not any(_FSDP_FULL_FILE.match(name) for name in top):
            reasons.append(_MISSING_WEIGHTS)
        reasons.append(_ACCELERATE_REASON)
    elif "config.json" in top:
        layout = "transformers"
        reasons.append(_MISSING_WEIGHTS)
    else:
        bare = sorted(
            name
            for name in files
            if name.lower().endswith(_TORCH_SAVE_SUFFIXES) and not _TRAINER_STATE_FILE.match(name)
        )
        if bare:
            layout = "torch-save"
            reasons.extend(
                f"bare torch.save file {name} is not a from_pretrained checkpoint" for name in bare
            )
        else:
            layout = "unknown"
            reasons.append(_MISSING_WEIGHTS)

    reasons.extend(_safetensors_reasons(directory, files))
    if config is not None and needs_tokenizer(config) and not has_tokenizer(directory, top):
        reasons.append(_MISSING_TOKENIZER)
    return _result(reasons, layout)


def _assess_adapters(
    directory: pathlib.Path, files: dict[str, int], top: set[str], adapters: list[str]
) -> Readiness:
    """PEFT adapters, each judged on its own (a named one's reasons say its name)."""
    reasons: list[str] = []
    for folder in adapters:
        own = {name[len(folder) :]: size for name, size in files.items() if name.startswith(folder)}
        said = _adapter_reasons(directory / folder, own, top)
        reasons.extend(f"adapter {folder[:-1]}: {reason}" if folder else reason for reason in said)
    reasons.extend(_safetensors_reasons(directory, files))
    return _result(reasons, "peft-adapter")


def _adapter_reasons(folder: pathlib.Path, files: dict[str, int], checkpoint_top: set[str]) -> list[str]:
    """One adapter: its config must name a base model that can be found, and its weights must be there."""
    reasons: list[str] = []
    top = {name for name in files if "/" not in name}
    adapter_config, problem = _read_json(folder, "adapter_config.json", files.get("adapter_config.json", -1))
    if problem:
        reasons.append(problem)
        adapter_config = None
    elif not isinstance(adapter_config, dict):
        reasons.append("adapter_config.json is not a JSON object")
        adapter_config = None
    else:
        base = adapter_config.get("base_model_name_or_path")
        if not isinstance(base, str) or not base.strip():
            reasons.append("adapter_config.json names no base model")
        else:
            local = local_model_path(base)
            if local is not None and not local.is_dir():
                reasons.append(f"base model {base} not found: a local path that does not exist")

    present = [name for name in _ADAPTER_WEIGHTS if name in top]
    if not present:
        reasons.append("missing adapter weights")
    else:
        reasons.extend(f"{name} is empty" for name in present if name.endswith(".bin") and files[name] == 0)

    if (
        adapter_config is not None
        and _adapter_changes_vocabulary(adapter_config)
        and not has_tokenizer(folder, top)
        and not has_tokenizer(folder.parent, checkpoint_top)
    ):
        reasons.append(_MISSING_TOKENIZER)
    return reasons


def _adapter_changes_vocabulary(adapter_config: Mapping[str, Any]) -> bool:
    """Whether the adapter trains input embeddings, PEFT's way of adding tokens to a vocabulary."""
    if adapter_config.get("trainable_token_indices"):
        return True
    modules = adapter_config.get("modules_to_save")
    if not isinstance(modules, list):
        return False
    for module in modules:
        if isinstance(module, str):
            leaf = module.rsplit(".", 1)[-1]
            if leaf in _EMBEDDING_NAMES or "embed_tokens" in leaf or leaf.endswith("word_embeddings"):
                return True
    return False


def _result(reasons: list[str], layout: str) -> Readiness:
    unique = tuple(dict.fromkeys(reasons))
    return Readiness(not unique, unique, layout)


def _read_config(directory: pathlib.Path, size: int, reasons: list[str]) -> dict[str, Any] | None:
    """``config.json`` as a dict, or None with the reason appended."""
    config, problem = _read_json(directory, "config.json", size)
    if problem:
        reasons.append(problem)
        return None
    if not isinstance(config, dict):
        reasons.append("config.json is not a JSON object")
        return None
    architectures = config.get("architectures")
    if not (
        isinstance(architectures, list)
        and architectures
        and all(isinstance(name, str) and name for name in architectures)
    ):
        reasons.append("config.json has no architectures")
    return config


def _read_json(directory: pathlib.Path, name: str, size: int = -1) -> tuple[Any, str | None]:
    """The parsed JSON of one small file, or a plain-word reason it could not be had."""
    if size > _MAX_JSON_BYTES:
        return None, f"{name} is too large to read"
    try:
        with open(directory / name, "rb") as handle:
            raw = handle.read(_MAX_JSON_BYTES + 1)
    except OSError:
        return None, f"{name} could not be read"
    if len(raw) > _MAX_JSON_BYTES:
        return None, f"{name} is too large to read"
    try:
        return json.loads(raw), None
    except (ValueError, RecursionError):
        return None, f"{name} is not valid JSON"


def _selected_weights(config: Mapping[str, Any] | None, files: Mapping[str, int]) -> str | None:
    """The weights file ``from_pretrained`` would load, or None when it would find none."""
    if config is not None:
        explicit = config.get("transformers_weights")
        if isinstance(explicit, str) and explicit:
            return explicit
    for name, _ in _WEIGHTS_CANDIDATES:
        if name in files:
            return name
    return None


def _weights_reasons(directory: pathlib.Path, files: Mapping[str, int], weights_file: str) -> list[str]:
    """What keeps the selected weights file (and, for an index, its shards) from loading."""
    if weights_file not in files:
        return [f"missing {weights_file}"]
    if not weights_file.endswith(".index.json"):
        return (
            [f"{weights_file} is empty"] if weights_file.endswith(".bin") and files[weights_file] == 0 else []
        )
    index, problem = _read_json(directory, weights_file, files[weights_file])
    if problem:
        return [problem]
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        return [f"{weights_file} has no weight_map"]
    if not all(isinstance(shard, str) and shard for shard in weight_map.values()):
        return [f"{weights_file} has a malformed weight_map"]
    shards: set[str] = set(weight_map.values())
    base = weights_file.rsplit("/", 1)[0] + "/" if "/" in weights_file else ""
    reasons: list[str] = []
    for shard in sorted(shards):
        path = base + shard
        if path not in files:
            reasons.append(f"missing {shard}")
        elif path.endswith(".bin") and files[path] == 0:
            reasons.append(f"{shard} is empty")
    return reasons


def _has_deepspeed_shards(files: Mapping[str, int], top: set[str]) -> bool:
    """ZeRO writes ``<tag>/*model_states.pt`` and ``*optim_states.pt`` and a top-level ``latest``."""
    if "latest" in top:
        return True
    return any("/" in name and _DEEPSPEED_SHARD.search(name.rsplit("/", 1)[-1]) for name in files)


def _has_fsdp_shards(files: Mapping[str, int]) -> bool:
    """FSDP sharded saves are ``*.distcp`` + ``.metadata`` (torch.distributed.checkpoint) or per-rank bins."""
    for name in files:
        leaf = name.rsplit("/", 1)[-1]
        if leaf.endswith(".distcp") or _FSDP_RANK_FILE.match(leaf):
            return True
        if leaf == ".metadata" and "/" in name and name.split("/")[-2].startswith("pytorch_model_fsdp"):
            return True
    return False


def _safetensors_reasons(directory: pathlib.Path, files: Mapping[str, int]) -> list[str]:
    reasons: list[str] = []
    for name in sorted(files):
        if name.endswith(".safetensors"):
            problem = _safetensors_problem(directory, name)
            if problem:
                reasons.append(problem)
    return reasons


def _safetensors_problem(directory: pathlib.Path, name: str) -> str | None:
    """Open the file with safetensors' own reader, which checks the header and that the tensors'
    data covers the file exactly, as loading demands; it maps the file and reads no tensor data."""
    try:
        with safe_open(str(directory / name), framework="numpy"):
            return None
    except SafetensorError as error:
        # Messages differ across safetensors versions ("header too small" / "HeaderTooSmall").
        said = str(error).lower().replace(" ", "")
        if "headertoosmall" in said:
            return f"{name} truncated"
        if "incompletemetadata" in said or "metadataincompletebuffer" in said:
            return f"{name} truncated or padded: its size does not match its header"
        return f"{name} has an unreadable header"
    except Exception:  # the file vanished, cannot be mapped, ...: say so, never raise
        return f"{name} has an unreadable header"
