"""The committed tiny model directory validates against CONTRACT.md and its own files."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from safetensors.torch import load_file

from conftest import TINY_DIR
from pva.config import DEMO, SD2, TINY
from pva.export import build_manifest, describe_graph, sha256

# Input and output names of each graph, as CONTRACT.md lists them.
CONTRACT_IO = {
    "text_encoder": (["input_ids", "new1_embedding"], ["hidden_states"]),
    "face_embedder": (["faces"], ["embeddings"]),
    "id_former": (["embeddings"], ["id_tokens"]),
    "unet": (["sample", "timestep", "encoder_hidden_states", "id_tokens", "id_switch", "adapter"], ["noise_pred"]),
    "vae_encoder": (["image"], ["latent_mean"]),
    "vae_decoder": (["latent"], ["image"]),
    "adapter_step": (
        ["params", "adam_m", "adam_v", "step", "lr_visual", "lr_token", "weight_decay", "input_ids", "latents",
         "noise", "timesteps", "mask", "masked_latents", "id_tokens"],
        ["new_params", "new_adam_m", "new_adam_v", "loss"],
    ),
}


def test_every_graph_is_present_with_contract_names(manifest) -> None:
    assert set(manifest["graphs"]) == set(CONTRACT_IO)
    for name, (inputs, outputs) in CONTRACT_IO.items():
        graph = manifest["graphs"][name]
        assert [i["name"] for i in graph["inputs"]] == inputs, name
        assert [o["name"] for o in graph["outputs"]] == outputs, name


def test_files_match_hashes_and_onnx_signatures(manifest) -> None:
    for name, graph in manifest["graphs"].items():
        path = TINY_DIR / graph["file"]
        assert graph["sha256"] == sha256(path), name
        assert graph["bytes"] == path.stat().st_size, name
        described = describe_graph(path)
        assert graph["inputs"] == described["inputs"], name
        assert graph["outputs"] == described["outputs"], name
        for value in graph["inputs"] + graph["outputs"]:
            assert value["dtype"] in ("float32", "int64")
            assert all(isinstance(d, int) or d in ("B", "N", "R") for d in value["shape"]), value


def test_shapes_follow_the_sizes(manifest) -> None:
    d, lat = manifest["hidden_size"], manifest["latent"]["size"]
    graphs = {n: {v["name"]: v for v in g["inputs"] + g["outputs"]} for n, g in manifest["graphs"].items()}
    assert graphs["text_encoder"]["input_ids"] == {"name": "input_ids", "dtype": "int64", "shape": ["B", 77]}
    assert graphs["text_encoder"]["hidden_states"]["shape"] == ["B", 77, d]
    assert graphs["face_embedder"]["faces"]["shape"] == ["N", 3, 112, 112]
    assert graphs["id_former"]["embeddings"]["shape"] == ["B", "R", 512]
    assert graphs["id_former"]["id_tokens"]["shape"] == ["B", manifest["num_id_tokens"], d]
    assert graphs["unet"]["sample"]["shape"] == ["B", 9, lat, lat]
    assert graphs["unet"]["adapter"]["shape"] == [manifest["adapter"]["visual_length"]]
    assert graphs["vae_decoder"]["image"]["shape"] == ["B", 3, manifest["resolution"], manifest["resolution"]]
    total = manifest["adapter"]["visual_length"] + manifest["adapter"]["token_length"]
    assert graphs["adapter_step"]["params"]["shape"] == [total]
    assert graphs["adapter_step"]["latents"]["shape"] == [manifest["tuning"]["batch_size"], 4, lat, lat]


def test_adapter_file_and_layout(manifest, stack) -> None:
    adapter = manifest["adapter"]
    path = TINY_DIR / adapter["file"]
    assert adapter["sha256"] == sha256(path)
    params = load_file(str(path))[adapter["tensor"]]
    assert params.dtype == torch.float32
    assert params.shape == (adapter["visual_length"] + adapter["token_length"],)
    assert torch.equal(params, stack.initial_params)
    offset = 0
    for entry in adapter["layout"]:
        assert entry["offset"] == offset
        size = 1
        for dim in entry["shape"]:
            size *= dim
        offset += size
        assert entry["group"] == ("token" if entry["name"] == "new1_embedding" else "visual")
    assert offset == params.numel()
    assert adapter["layout"][-1] == {"name": "new1_embedding", "group": "token",
                                     "offset": adapter["visual_length"], "shape": [manifest["hidden_size"]]}


def test_constants_of_the_contract(manifest) -> None:
    assert manifest["format_version"] == 1 and manifest["name"] == "pva-tiny"
    assert manifest["resolution"] == 64 and manifest["hidden_size"] == 32
    assert manifest["latent"] == {"channels": 4, "size": 8, "factor": 8}
    assert manifest["vae"] == {"scaling_factor": 0.18215}
    assert manifest["face"] == {"crop_size": 112, "embedding_dim": 512}
    assert manifest["prompt_template"] == "a <new1> person {prompt}"
    assert manifest["tokenizer"] == {"max_length": 77, "pad_id": 0, "bos_id": 49406, "eos_id": 49407,
                                     "new_token": "<new1>", "new_token_id": 49408}
    assert manifest["scheduler"] == {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                                     "beta_schedule": "scaled_linear", "prediction_type": "epsilon",
                                     "steps_offset": 1, "set_alpha_to_one": False, "timestep_spacing": "leading"}


def _manifest_of(config, tmp_path) -> dict:
    """`build_manifest` of a size, on a stand-in stack (the manifest's settings come from the config)."""
    adapter = tmp_path / "adapter_init.safetensors"
    adapter.write_bytes(b"stand-in")
    stack = SimpleNamespace(config=config, scheduler_config=dict(config.scheduler), tokenizer=dict(config.tokenizer),
                            visual_length=0, token_length=config.hidden_size, adapter_layout=[])
    return build_manifest(stack, tmp_path, {}, adapter)


def test_sd2_manifests_carry_the_paper_settings(tmp_path) -> None:
    m = _manifest_of(SD2, tmp_path)
    assert m["face"] == {"crop_size": 112, "embedding_dim": 512,
                         "embed_window": {"source_size": 512, "resize": 256, "rows": [35, 223], "cols": [32, 220]}}
    assert m["prompt_template"] == "photo of a <new1> person, {prompt}"
    assert m["guidance"] == {"uncond_identity": True, "negative_prompt": "photo of a person"}


def test_tiny_and_demo_manifests_keep_the_older_conventions(tmp_path, manifest) -> None:
    for config in (TINY, DEMO):
        m = _manifest_of(config, tmp_path)
        assert "guidance" not in m and "embed_window" not in m["face"]
        assert m["face"] == manifest["face"] and m["prompt_template"] == manifest["prompt_template"]
    assert "guidance" not in manifest
