"""Readiness on real save_pretrained / PEFT / accelerate / DeepSpeed / FSDP directories and broken copies."""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from checkpoint_records.readiness import Readiness, assess_readiness, needs_tokenizer
from tiny import save_tiny_pretrained, tiny_model, tiny_tokenizer

DEEPSPEED = "DeepSpeed ZeRO shards without consolidated weights (run zero_to_fp32.py)"
FSDP = "FSDP sharded state dict without consolidated weights (merge it with accelerate merge-weights)"
ACCELERATE = "accelerate save_state output is not a from_pretrained checkpoint (use save_pretrained)"


def scan(directory: Path) -> dict[str, int]:
    """The ``files`` mapping a directory scan hands over: relative POSIX path -> size."""
    files: dict[str, int] = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = Path(root) / name
            files[path.relative_to(directory).as_posix()] = path.stat().st_size
    return files


def assess(directory: Path) -> Readiness:
    return assess_readiness(directory, scan(directory))


def expect(directory: Path, layout: str, *reasons: str) -> None:
    result = assess(directory)
    assert result == Readiness(ready=not reasons, reasons=reasons, layout=layout)


def copy(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / source.name))


def edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


#: What safetensors' reader tells of a file whose data does not end where its header says.
MISMATCH = "truncated or padded: its size does not match its header"


def truncate(path: Path, by: int = 3) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - by)


def loads_with_transformers(directory: Path) -> bool:
    from transformers import AutoModelForCausalLM

    try:
        AutoModelForCausalLM.from_pretrained(directory)
    except Exception:
        return False
    return True


# --- real directories, written once per module -------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("readiness")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = save_tiny_pretrained(root / "plain")
        dirs = {
            "plain": plain,
            "sharded": save_tiny_pretrained(root / "sharded", max_shard_size="20KB"),
            "adapter": _save_adapter(root / "adapter", plain),
            "adapter-new-tokens": _save_adapter(root / "adapter-new-tokens", plain, modules_to_save=["wte"]),
        }
    return dirs


def _save_adapter(directory: Path, base: Path | None, **lora: Any) -> Path:
    """A LoRA adapter of the model saved at ``base`` (or of a model built in memory, when None)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = tiny_model() if base is None else AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(task_type="CAUSAL_LM", target_modules=["c_attn"], **lora)
    get_peft_model(model, config).save_pretrained(directory)
    return directory


def _shards(directory: Path) -> list[str]:
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    return sorted(set(index["weight_map"].values()))


# --- transformers layout ----------------------------------------------------------------------


def test_plain_save_pretrained_is_ready(built: dict[str, Path]) -> None:
    expect(built["plain"], "transformers")
    assert loads_with_transformers(built["plain"])


def test_sharded_save_pretrained_is_ready(built: dict[str, Path]) -> None:
    assert len(_shards(built["sharded"])) >= 3
    assert "model.safetensors" not in scan(built["sharded"])
    expect(built["sharded"], "transformers")
    assert loads_with_transformers(built["sharded"])


def test_truncated_shard(built: dict[str, Path], tmp_path: Path) -> None:
    directory = copy(built["sharded"], tmp_path)
    shard = _shards(directory)[1]
    truncate(directory / shard)
    expect(directory, "transformers", f"{shard} {MISMATCH}")
    assert not loads_with_transformers(directory)


def test_deleted_shard(built: dict[str, Path], tmp_path: Path) -> None:
    directory = copy(built["sharded"], tmp_path)
    first, second = _shards(directory)[:2]
    (directory / second).unlink()
    (directory / first).unlink()
    expect(directory, "transformers", f"missing {first}", f"missing {second}")
    assert not loads_with_transformers(directory)


def test_index_without_weight_map(built: dict[str, Path], tmp_path: Path) -> None:
    directory = copy(built["sharded"], tmp_path)
    edit_json(directory / "model.safetensors.index.json", weight_map=...)
    expect(directory, "transformers", "model.safetensors.index.json has no weight_map")
    (directory / "model.safetensors.index.json").write_text("{not json")
    expect(directory, "transformers", "model.safetensors.index.json is not valid JSON")


def test_truncated_single_file(built: dict[str, Path], tmp_path: Path) -> None:
    directory = copy(built["plain"], tmp_path)
    truncate(directory / "model.safetensors", by=1)
    expect(directory, "transformers", f"model.safetensors {MISMATCH}")
    truncate(directory / "model.safetensors", by=(directory / "model.safetensors").stat().st_size - 5)
    expect(directory, "transformers", "model.safetensors truncated")


def test_corrupted_header(built: dict[str, Path], tmp_path: Path) -> None:
    directory = copy(built["plain"], tmp_path)
    with open(directory / "model.safetensors", "r+b") as handle:
        handle.seek(8)
        handle.write(b"\xff" * 12)
    expect(directory, "transformers", "model.safetensors has an unreadable header")
    assert not loads_with_transformers(directory)


def test_absurd_header_length(built: dict[str, Path], tmp_path: Path) -> None:
    directory = copy(built["plain"], tmp_path)
    with open(directory / "model.safetensors", "r+b") as handle:
        handle.write((2**63).to_bytes(8, "little"))
    expect(directory, "transformers", "model.safetensors has an unreadable header")


def test_trailing_bytes(built: dict[str, Path], tmp_path: Path) -> None:
    directory = copy(built["plain"], tmp_path)
    with open(directory / "model.safetensors", "ab") as handle:
        handle.write(b"\0" * 16)
    expect(directory, "transformers", f"model.safetensors {MISMATCH}")


def test_missing_weights(built: dict[str, Path], tmp_path: Path) -> None:
    directory = copy(built["plain"], tmp_path)
    (directory / "model.safetensors").unlink()
    expect(directory, "transformers", "missing model weights")


def test_pytorch_model_bin(built: dict[str, Path], tmp_path: Path) -> None:
    directory = copy(built["plain"], tmp_path)
    (directory / "model.safetensors").unlink()
    torch.save(tiny_model().state_dict(), directory / "pytorch_model.bin")
    expect(directory, "transformers")
    assert loads_with_transformers(directory)
    (directory / "pytorch_model.bin").write_bytes(b"")
    expect(directory, "transformers", "pytorch_model.bin is empty")


def test_missing_tokenizer(tmp_path: Path) -> None:
    directory = save_tiny_pretrained(tmp_path / "no-tokenizer", with_tokenizer=False)
    expect(directory, "transformers", "missing tokenizer")
    tiny_tokenizer().save_pretrained(directory)
    expect(directory, "transformers")


def test_tokenizer_config_needs_a_vocabulary(built: dict[str, Path], tmp_path: Path) -> None:
    directory = copy(built["plain"], tmp_path)
    (directory / "tokenizer.json").unlink()
    expect(directory, "transformers", "missing tokenizer")
    (directory / "vocab.json").write_text("{}")
    expect(directory, "transformers")
    (directory / "vocab.json").unlink()
    (directory / "preprocessor_config.json").write_text("{}")
    expect(directory, "transformers")


def test_config_without_architectures(built: dict[str, Path], tmp_path: Path) -> None:
    directory = copy(built["plain"], tmp_path)
    edit_json(directory / "config.json", architectures=...)
    expect(directory, "transformers", "config.json has no architectures")
    edit_json(directory / "config.json", architectures=[])
    expect(directory, "transformers", "config.json has no architectures")


def test_config_not_json_or_missing(built: dict[str, Path], tmp_path: Path) -> None:
    directory = copy(built["plain"], tmp_path)
    (directory / "config.json").write_text('{"architectures": [')
    expect(directory, "transformers", "config.json is not valid JSON")
    (directory / "config.json").unlink()
    expect(directory, "transformers", "missing config.json")


def test_reasons_are_ordered_and_unique(built: dict[str, Path], tmp_path: Path) -> None:
    directory = copy(built["sharded"], tmp_path)
    shards = _shards(directory)
    edit_json(directory / "config.json", architectures=...)
    (directory / "tokenizer.json").unlink()
    (directory / shards[0]).unlink()
    truncate(directory / shards[2])
    truncate(directory / shards[1])
    expected = (
        "config.json has no architectures",
        f"missing {shards[0]}",
        f"{shards[1]} {MISMATCH}",
        f"{shards[2]} {MISMATCH}",
        "missing tokenizer",
    )
    files = scan(directory)
    shuffled = list(files.items())
    random.Random(0).shuffle(shuffled)
    for mapping in (files, dict(shuffled), dict(reversed(shuffled))):
        assert assess_readiness(directory, mapping) == Readiness(False, expected, "transformers")


def test_vision_model_needs_no_tokenizer(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=8,
        patch_size=4,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
    )
    ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    expect(tmp_path / "vit", "transformers")


def test_text_model_rule() -> None:
    assert needs_tokenizer({"architectures": ["LlamaForCausalLM"]})
    assert needs_tokenizer({"architectures": ["GPT2LMHeadModel"]})
    assert needs_tokenizer({"architectures": ["BertModel"], "vocab_size": 30522})
    assert needs_tokenizer({"architectures": ["LlavaModel"], "text_config": {}})
    assert not needs_tokenizer({"architectures": ["ViTForImageClassification"]})
    assert not needs_tokenizer({"architectures": ["ViTModel"], "vocab_size": 0})


# --- PEFT adapters ----------------------------------------------------------------------------


def test_adapter_is_ready_without_config_or_tokenizer(built: dict[str, Path]) -> None:
    files = scan(built["adapter"])
    assert "config.json" not in files
    assert "tokenizer.json" not in files
    base = json.loads((built["adapter"] / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str(built["plain"])
    expect(built["adapter"], "peft-adapter")
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    AutoPeftModelForCausalLM.from_pretrained(built["adapter"])  # loads as it stands
    AutoTokenizer.from_pretrained(base)  # and the tokenizer comes from the base model


def test_adapter_of_an_unnamed_model_names_no_base(tmp_path: Path) -> None:
    """PEFT writes ``base_model_name_or_path: null`` for a model built in memory, not loaded."""
    directory = _save_adapter(tmp_path / "unnamed", None)
    assert json.loads((directory / "adapter_config.json").read_text())["base_model_name_or_path"] is None
    expect(directory, "peft-adapter", "adapter_config.json names no base model")


def test_adapter_without_base_model(built: dict[str, Path], tmp_path: Path) -> None:
    directory = copy(built["adapter"], tmp_path)
    edit_json(directory / "adapter_config.json", base_model_name_or_path="")
    expect(directory, "peft-adapter", "adapter_config.json names no base model")
    edit_json(directory / "adapter_config.json", base_model_name_or_path=None)
    expect(directory, "peft-adapter", "adapter_config.json names no base model")


def test_adapter_without_weights(built: dict[str, Path], tmp_path: Path) -> None:
    directory = copy(built["adapter"], tmp_path)
    (directory / "adapter_model.safetensors").unlink()
    expect(directory, "peft-adapter", "missing adapter weights")


def test_adapter_broken(built: dict[str, Path], tmp_path: Path) -> None:
    directory = copy(built["adapter"], tmp_path)
    truncate(directory / "adapter_model.safetensors")
    (directory / "adapter_config.json").write_text("")
    expect(
        directory,
        "peft-adapter",
        "adapter_config.json is not valid JSON",
        f"adapter_model.safetensors {MISMATCH}",
    )


def test_adapter_that_trains_embeddings_needs_its_tokenizer(built: dict[str, Path], tmp_path: Path) -> None:
    directory = copy(built["adapter-new-tokens"], tmp_path)
    expect(directory, "peft-adapter", "missing tokenizer")
    tiny_tokenizer().save_pretrained(directory)
    expect(directory, "peft-adapter")


# --- training-state layouts -------------------------------------------------------------------


def _zero3_shards(directory: Path) -> None:
    """The files a ZeRO-3 Trainer checkpoint holds besides config and tokenizer."""
    tag = directory / "global_step10"
    tag.mkdir()
    state = tiny_model().state_dict()
    torch.save(
        {"module": None, "param_shapes": [{k: v.shape for k, v in state.items()}]},
        tag / "zero_pp_rank_0_mp_rank_00_model_states.pt",
    )
    torch.save(
        {"optimizer_state_dict": {"fp32_flat_groups": [torch.zeros(8)]}},
        tag / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
    )
    (directory / "latest").write_text("global_step10")
    (directory / "zero_to_fp32.py").write_text("# DeepSpeed's consolidation script\n")


def test_deepspeed_zero3_without_consolidated_weights(built: dict[str, Path], tmp_path: Path) -> None:
    directory = copy(built["plain"], tmp_path)
    (directory / "model.safetensors").unlink()
    _zero3_shards(directory)
    expect(directory, "deepspeed-zero", DEEPSPEED)
    (directory / "tokenizer.json").unlink()
    expect(directory, "deepspeed-zero", DEEPSPEED, "missing tokenizer")


def test_deepspeed_zero3_with_consolidated_weights(built: dict[str, Path], tmp_path: Path) -> None:
    directory = copy(built["plain"], tmp_path)
    _zero3_shards(directory)
    expect(directory, "transformers")
    truncate(directory / "model.safetensors")
    expect(directory, "transformers", f"model.safetensors {MISMATCH}")


def _fsdp_shards(directory: Path) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": tiny_model().state_dict()}, checkpoint_id=str(directory / "pytorch_model_fsdp_0"))


def test_fsdp_sharded_without_consolidated_weights(built: dict[str, Path], tmp_path: Path) -> None:
    directory = copy(built["plain"], tmp_path)
    (directory / "model.safetensors").unlink()
    _fsdp_shards(directory)
    files = scan(directory)
    assert {"pytorch_model_fsdp_0/__0_0.distcp", "pytorch_model_fsdp_0/.metadata"} <= set(files)
    expect(directory, "fsdp-sharded", FSDP)


def test_fsdp_sharded_with_consolidated_weights(built: dict[str, Path], tmp_path: Path) -> None:
    directory = copy(built["plain"], tmp_path)
    _fsdp_shards(directory)
    expect(directory, "transformers")


def _rng_states(directory: Path, ranks: int = 2) -> None:
    """Each rank's ``random_states_<rank>.pkl``, as accelerate's ``save_state`` writes them."""
    for rank in range(ranks):
        torch.save({"random_state": random.getstate()}, directory / f"random_states_{rank}.pkl")


def _save_state_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "checkpoints" / "checkpoint_0"
    directory.mkdir(parents=True)
    _rng_states(directory)
    return directory


def test_accelerate_save_state_under_fsdp_sharded_state_dict(tmp_path: Path) -> None:
    """SHARDED_STATE_DICT: the model and the optimizer as torch.distributed.checkpoint folders."""
    import torch.distributed.checkpoint as dcp

    directory = _save_state_dir(tmp_path)
    _fsdp_shards(directory)
    optimizer = torch.optim.AdamW(tiny_model().parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"optimizer": optimizer.state_dict()}, checkpoint_id=str(directory / "optimizer_0"))
    expect(directory, "fsdp-sharded", "missing config.json", FSDP)


@pytest.mark.parametrize("prefix", ["pytorch_model_fsdp", "pytorch_model_fsdp_0"])
def test_accelerate_save_state_under_fsdp_per_rank_shards(tmp_path: Path, prefix: str) -> None:
    """LOCAL_STATE_DICT (``pytorch_model_fsdp_rank<r>.bin``) or sharded without DCP (``..._0_rank<r>.bin``)."""
    directory = _save_state_dir(tmp_path)
    state = tiny_model().state_dict()
    for rank in range(2):
        shard = {name: tensor.flatten().chunk(2)[rank].clone() for name, tensor in state.items()}
        torch.save(shard, directory / f"{prefix}_rank{rank}.bin")
    expect(directory, "fsdp-sharded", "missing config.json", FSDP)


def test_accelerate_save_state_under_fsdp_full_state_dict(tmp_path: Path) -> None:
    """FULL_STATE_DICT: whole weights, but a bare state dict for ``load_state``, not ``from_pretrained``."""
    directory = _save_state_dir(tmp_path)
    torch.save(tiny_model().state_dict(), directory / "pytorch_model_fsdp.bin")
    torch.save(torch.optim.AdamW(tiny_model().parameters()).state_dict(), directory / "optimizer.bin")
    expect(directory, "accelerate-state", "missing config.json", ACCELERATE)


def test_accelerate_save_state_under_deepspeed_zero2(tmp_path: Path) -> None:
    """The DeepSpeed engine's checkpoint in accelerate's ``pytorch_model`` tag folder (ZeRO-2 file names)."""
    directory = _save_state_dir(tmp_path)
    tag = directory / "pytorch_model"
    tag.mkdir()
    torch.save({"module": tiny_model().state_dict()}, tag / "mp_rank_00_model_states.pt")
    for rank in range(2):
        torch.save(
            {"optimizer_state_dict": {"single_partition_of_fp32_groups": [torch.zeros(8)]}},
            tag / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt",
        )
    (directory / "latest").write_text("pytorch_model")
    (directory / "zero_to_fp32.py").write_text("# DeepSpeed's consolidation script\n")
    expect(directory, "deepspeed-zero", "missing config.json", DEEPSPEED)


def test_accelerate_save_state(tmp_path: Path) -> None:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    directory = tmp_path / "state"
    try:
        accelerator = Accelerator(cpu=True)
        model = tiny_model()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model, optimizer = accelerator.prepare(model, optimizer)
        accelerator.save_state(directory)
        files = scan(directory)
        assert "optimizer.bin" in files
        assert any(name.startswith("random_states_") for name in files)
        expect(directory, "accelerate-state", "missing config.json", ACCELERATE)
        accelerator.unwrap_model(model).config.save_pretrained(directory)
        (directory / "config.json").write_text(
            json.dumps(
                {**json.loads((directory / "config.json").read_text()), "architectures": ["GPT2LMHeadModel"]}
            )
        )
        tiny_tokenizer().save_pretrained(directory)
        expect(directory, "transformers")
        assert loads_with_transformers(directory)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_accelerate_state_without_model(tmp_path: Path) -> None:
    tmp_path = tmp_path / "state"
    tmp_path.mkdir()
    (tmp_path / "optimizer.bin").write_bytes(b"x")
    (tmp_path / "random_states_0.pkl").write_bytes(b"x")
    expect(tmp_path, "accelerate-state", "missing config.json", "missing model weights", ACCELERATE)


def test_bare_torch_save(tmp_path: Path) -> None:
    tmp_path = tmp_path / "bare"
    tmp_path.mkdir()
    torch.save(tiny_model().state_dict(), tmp_path / "ckpt.pt")
    expect(
        tmp_path,
        "torch-save",
        "missing config.json",
        "bare torch.save file ckpt.pt is not a from_pretrained checkpoint",
    )
    save_tiny_pretrained(tmp_path)
    expect(tmp_path, "transformers")


# --- bad input never raises -------------------------------------------------------------------


def test_empty_directory(tmp_path: Path) -> None:
    tmp_path = tmp_path / "empty"
    tmp_path.mkdir()
    expect(tmp_path, "unknown", "missing config.json", "missing model weights")


def test_listing_that_does_not_match_the_disk(tmp_path: Path) -> None:
    files = {"config.json": 10, "model.safetensors": 100, "tokenizer.json": 5}
    result = assess_readiness(tmp_path / "gone", files)
    assert result == Readiness(
        False, ("config.json could not be read", "model.safetensors has an unreadable header"), "transformers"
    )
    odd: dict[Any, Any] = {"./config.json": "big", "adapter_config.json": None, 3: 4}
    result = assess_readiness(tmp_path, odd)
    assert result.layout == "peft-adapter"
    assert result.reasons == ("adapter_config.json could not be read", "missing adapter weights")


def test_garbage_files(tmp_path: Path) -> None:
    tmp_path = tmp_path / "garbage"
    tmp_path.mkdir()
    (tmp_path / "config.json").write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00[]")
    (tmp_path / "extra.safetensors").write_bytes(b"\x00\x00")
    (tmp_path / "deep.safetensors").write_bytes(b"\x0a\x00\x00\x00\x00\x00\x00\x00" + b"[" * 10)
    expect(
        tmp_path,
        "transformers",
        "config.json is not valid JSON",
        "deep.safetensors has an unreadable header",
        "extra.safetensors truncated",
        "model.safetensors has an unreadable header",
    )
