"""Checkpoint loaders: the formats customers have, written with random weights and real key names.

The `tiny` size stands in for `sd2` (same structure, narrow): a diffusers directory, the paper's
FPIP.bin (a NESTED dict: `modifier_vec`, `transform_network` in the TransformNetwork's `0.`/`1.`
naming, `unet` with only the attn2 visual projections, `face_net` = FaceNet's `facenet.*`), an
arcface_torch iresnet state dict; each loaded part must equal what was written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pva import PvaStack, build_stack
from pva.checkpoints import paper_source, visual_state, write_diffusers, write_fpip
from pva.config import get_config
from pva.export import example_inputs, main
from pva.weights import WeightsError, load_checkpoints, save_trained

CONFIG_SIZE = "tiny"


@pytest.fixture(scope="module")
def source() -> dict:
    """A tiny stack whose every part differs from a fresh build (`pva.checkpoints.paper_source`)."""
    return paper_source(CONFIG_SIZE, seed=1)


@pytest.fixture(scope="module")
def files(source, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    torch.save(source["arcface"], root / "ms1mv3_arcface_r50.pth")
    return {
        "base": write_diffusers(root / "sd2-inpainting", source["stack"]),
        "fpip": write_fpip(root / "FPIP.bin", source, drop=("face_net",)),
        "fpip_all": write_fpip(root / "FPIP_all.bin", source),
        "arcface": root / "ms1mv3_arcface_r50.pth",
    }


def _config():
    return get_config(CONFIG_SIZE)


def _assert_same(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    assert set(state) == set(expected), what
    for key, value in expected.items():
        assert torch.equal(state[key], value), f"{what}: {key}"


def _assert_stack(stack: PvaStack, source: dict, face: dict[str, torch.Tensor]) -> None:
    src: PvaStack = source["stack"]
    _assert_same(stack.unet.state_dict(), src.unet.state_dict(), "unet (visual included)")
    _assert_same(stack.vae.state_dict(), src.vae.state_dict(), "vae")
    _assert_same(stack.text_encoder.clip.state_dict(), src.text_encoder.clip.state_dict(), "text encoder")
    _assert_same(stack.face_embedder.state_dict(), face, "face embedder")
    assert torch.equal(stack.split_params(stack.initial_params)[1], source["new1"])
    # The id former computes what the paper's TransformNetwork does, and the UNet graph what the source's does.
    embeddings = torch.randn(2, 3, stack.config.face.embedding_dim)
    with torch.no_grad():
        assert torch.allclose(stack.id_former(embeddings), source["transform_network"](embeddings), atol=1e-5)
        inputs = example_inputs(stack, "unet", 2)
        assert torch.equal(stack.unet_graph(**inputs), src.unet_graph(**inputs))


def test_paper_checkpoints_load_every_part_from_its_source(source, files) -> None:
    loaded = load_checkpoints(_config(), files["base"], [files["fpip"]], files["arcface"])
    stack = build_stack(CONFIG_SIZE, seed=5, weights=loaded.weights)
    _assert_stack(stack, source, source["arcface"])
    summary = loaded.summary()
    base, fpip = files["base"], files["fpip"]
    assert summary[:7] == [
        f"unet: {base}/unet/diffusion_pytorch_model.safetensors (208 tensors)",
        f"vae: {base}/vae/diffusion_pytorch_model.safetensors (184 tensors)",
        f"text encoder: {base}/text_encoder/model.safetensors (36 tensors)",
        f"face embedder: {files['arcface']} (115 tensors)",
        f'id former: {fpip} ["transform_network"] (18 tensors)',
        f'visual projections: {fpip} ["unet"] (12 tensors)',
        f'<new1>: {fpip} ["modifier_vec"]',
    ]
    assert summary[7].startswith(f"scheduler: {base}/scheduler/scheduler_config.json agrees on num_train_timesteps")
    assert summary[8].startswith(f"tokenizer: {base}/tokenizer present, not read")


def test_face_net_of_a_stage2_checkpoint_replaces_the_arcface_file(source, files) -> None:
    loaded = load_checkpoints(_config(), files["base"], [files["fpip_all"]], files["arcface"])
    stack = build_stack(CONFIG_SIZE, seed=5, weights=loaded.weights)
    face = {k.removeprefix("facenet."): v for k, v in source["face_net"].state_dict().items()}
    _assert_stack(stack, source, face)
    assert f'face embedder: {files["fpip_all"]} ["face_net"] "facenet.*" (115 tensors; replaces {files["arcface"]})' \
        in loaded.summary()


def test_bin_diffusers_layout_with_legacy_names_loads_the_same(source, files, tmp_path) -> None:
    base = write_diffusers(tmp_path / "bin", source["stack"], fmt="bin", legacy_names=True)
    loaded = load_checkpoints(_config(), base, [files["fpip"]], files["arcface"])
    reference = load_checkpoints(_config(), files["base"], [files["fpip"]], files["arcface"])
    for part in ("unet", "vae", "text_encoder"):
        _assert_same(loaded.weights[part], reference.weights[part], part)
    summary = loaded.summary()
    assert f"vae: {base}/vae/diffusion_pytorch_model.bin (184 tensors; " \
           "16 deprecated attention names (query/key/value/proj_attn) renamed)" in summary
    assert f"text encoder: {base}/text_encoder/pytorch_model.bin (37 tensors; dropped the position_ids buffer)" in summary
    _assert_stack(build_stack(CONFIG_SIZE, seed=5, weights=loaded.weights), source, source["arcface"])


def test_arcface_wrapped_as_facenet_and_flat_paper_names(source, files, tmp_path) -> None:
    torch.save(source["face_net"].state_dict(), tmp_path / "facenet.pth")
    stack = source["stack"]
    flat = {f"unet.{k}": v for k, v in visual_state(stack).items()}
    flat |= {f"trans_net.{k}": v for k, v in source["transform_network"].state_dict().items()}
    flat["tuned_embedding.modifier_vec"] = source["new1"]
    save_file({k: v.contiguous() for k, v in flat.items()}, str(tmp_path / "pva.safetensors"))
    loaded = load_checkpoints(_config(), files["base"], [tmp_path / "pva.safetensors"], tmp_path / "facenet.pth")
    face = {k.removeprefix("facenet."): v for k, v in source["face_net"].state_dict().items()}
    _assert_stack(build_stack(CONFIG_SIZE, seed=5, weights=loaded.weights), source, face)
    summary = loaded.summary()
    assert f'face embedder: {tmp_path}/facenet.pth "facenet.*" (115 tensors)' in summary
    assert f'id former: {tmp_path}/pva.safetensors "trans_net.*" (18 tensors)' in summary
    assert f'<new1>: {tmp_path}/pva.safetensors "tuned_embedding.modifier_vec"' in summary
    # An arcface file saved without BatchNorm's step counters (unused at inference) loads too.
    torch.save({k: v for k, v in source["arcface"].items() if "num_batches_tracked" not in k}, tmp_path / "r50.pth")
    loaded = load_checkpoints(_config(), files["base"], [files["fpip"]], tmp_path / "r50.pth")
    _assert_stack(build_stack(CONFIG_SIZE, seed=5, weights=loaded.weights), source, source["arcface"])
    assert f"face embedder: {tmp_path}/r50.pth (96 tensors; 19 absent num_batches_tracked counters set to 0)" \
        in loaded.summary()


def test_our_trained_file_over_the_base_replaces_every_part(source, files, tmp_path) -> None:
    trained = build_stack(CONFIG_SIZE, seed=3)
    save_trained(tmp_path / "trained.safetensors", trained.weights(torch.arange(32, dtype=torch.float32)))
    loaded = load_checkpoints(_config(), files["base"], [tmp_path / "trained.safetensors"])
    stack = build_stack(CONFIG_SIZE, seed=5, weights=loaded.weights)
    _assert_same(stack.unet.state_dict(), trained.unet.state_dict(), "unet")
    _assert_same(stack.id_former.state_dict(), trained.id_former.state_dict(), "id former")
    assert f'unet: {files["base"]}/unet/diffusion_pytorch_model.safetensors (208 tensors); ' \
           f'208 replaced by {tmp_path}/trained.safetensors "unet.*"' in loaded.summary()


def test_per_person_finetune_without_id_former_is_an_error_naming_what_was_looked_for(source, files, tmp_path) -> None:
    finetune = write_fpip(tmp_path / "FPIP.bin", source, drop=("face_net", "transform_network"))
    with pytest.raises(WeightsError) as err:
        load_checkpoints(_config(), files["base"], [finetune], files["arcface"])
    message = str(err.value)
    assert message.startswith("id former: missing. Looked in: ")
    assert f'--pva {finetune} (nested ["modifier_vec"] (a tensor [32]), ["unet"] (12 tensors))' in message
    assert '["transform_network"]' in message and '"trans_net."' in message
    # The stage-2 checkpoint it started from supplies it; the finetune's own parts replace the rest.
    loaded = load_checkpoints(_config(), files["base"], [files["fpip_all"], finetune], files["arcface"])
    assert f'id former: {files["fpip_all"]} ["transform_network"] (18 tensors)' in loaded.summary()
    assert f'visual projections: {finetune} ["unet"] (12 tensors; replaces {files["fpip_all"]} ["unet"])' \
        in loaded.summary()


def test_missing_visual_projections_are_an_error_unless_init_is_allowed(source, files, tmp_path) -> None:
    stack = source["stack"]
    cross_qkv = {k: v.clone() for k, v in stack.unet.state_dict().items() if "attn2.to_q" in k}
    fpip = write_fpip(tmp_path / "FPIP.bin", source, drop=("unet",), unet=cross_qkv)
    with pytest.raises(WeightsError, match=r"visual projections: missing\. .*to_visual_q\.weight.*--allow-init visual"):
        load_checkpoints(_config(), files["base"], [fpip], files["arcface"])
    loaded = load_checkpoints(_config(), files["base"], [fpip], files["arcface"], allow_init=["visual"])
    assert loaded.summary()[5] == "visual projections: copied from each attn2's to_q/to_k/to_v " \
                                  "(--allow-init visual; the paper's change_forward init)"
    rebuilt = build_stack(CONFIG_SIZE, seed=5, weights=loaded.weights).unet.state_dict()
    for key in (k for k in rebuilt if "to_visual_" in k):
        assert torch.equal(rebuilt[key], rebuilt[key.replace("to_visual_", "to_")]), key
    # A partial set is no source: every projection or none.
    partial = visual_state(stack)
    partial.pop(sorted(partial)[0])
    fpip = write_fpip(tmp_path / "partial.bin", source, drop=("unet",), unet=partial)
    with pytest.raises(WeightsError, match=r"visual projections: .*partial.bin \[\"unet\"\] does not fit .* "
                                           r"1 of its 12 keys missing"):
        load_checkpoints(_config(), files["base"], [fpip], files["arcface"], allow_init=["visual"])


def test_missing_token_is_an_error_unless_init_is_allowed(source, files, tmp_path) -> None:
    fpip = write_fpip(tmp_path / "FPIP.bin", source, drop=("modifier_vec",))
    with pytest.raises(WeightsError, match=r'<new1>: missing\. .*\["modifier_vec"\].*"new1_embedding"'):
        load_checkpoints(_config(), files["base"], [fpip])
    loaded = load_checkpoints(_config(), files["base"], [fpip], allow_init=["new1"])
    assert 'the token embedding of "person"' in loaded.summary()[6]
    # custom diffusion's naming: {"modifier_token": {"<new1>": vec}}
    fpip = write_fpip(tmp_path / "cd.bin", source, drop=("modifier_vec",), modifier_token={"<new1>": source["new1"]})
    loaded = load_checkpoints(_config(), files["base"], [fpip])
    assert torch.equal(loaded.weights["new1_embedding"], source["new1"])


def test_missing_face_embedder_and_unusable_entries_are_errors(source, files, tmp_path) -> None:
    with pytest.raises(WeightsError, match=r"face embedder: missing\. .*--face ARCFACE"):
        load_checkpoints(_config(), files["base"], [files["fpip"]])
    clip = {"embeddings.patch_embedding.weight": torch.zeros(2)}
    fpip = write_fpip(tmp_path / "FPIP.bin", source, clip_vision_model=clip, step=torch.tensor(3))
    with pytest.raises(WeightsError, match=r'holds what this exporter cannot use: \["clip_vision_model"\] \(1 tensor: '
                                           r'a CLIP image encoder .*\), "step"'):
        load_checkpoints(_config(), files["base"], [fpip], files["arcface"])
    fpip = write_fpip(tmp_path / "empty.bin", source, clip_vision_model={})
    load_checkpoints(_config(), files["base"], [fpip])  # an empty entry is nothing to lose
    with pytest.raises(WeightsError, match="only \\['new1', 'visual'\\] can"):
        load_checkpoints(_config(), files["base"], [fpip], allow_init=["id_former"])


def test_wrong_shapes_and_configs_are_errors(source, files, tmp_path) -> None:
    arcface = dict(source["arcface"])
    arcface["fc.weight"] = torch.zeros(512, 7)
    torch.save(arcface, tmp_path / "r18.pth")
    with pytest.raises(WeightsError, match=r'face embedder: .*r18.pth does not fit .*"fc.weight" is \[512, 7\]'):
        load_checkpoints(_config(), files["base"], [files["fpip"]], tmp_path / "r18.pth")
    base = write_diffusers(tmp_path / "base", source["stack"])
    config = json.loads((base / "unet" / "config.json").read_text())
    (base / "unet" / "config.json").write_text(json.dumps({**config, "attention_head_dim": 4}))
    with pytest.raises(WeightsError, match=r"unet/config.json: attention_head_dim = 4, this exporter builds 8"):
        load_checkpoints(_config(), base, [files["fpip"]], files["arcface"])
    (base / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (base / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=r"unet: no weights file in .*it holds \['config.json'\]"):
        load_checkpoints(_config(), base, [files["fpip"]], files["arcface"])


def test_trainer_loader_keeps_missing_trained_parts_at_init(files, tmp_path) -> None:
    # The trainer's load (pva.train.trainer): partial, the parts the stages train keep their init.
    loaded = load_checkpoints(_config(), files["base"], [], None, partial=True)
    assert set(loaded.weights) == {"unet", "vae", "text_encoder"}
    summary = "\n".join(loaded.summary())
    for label in ("face embedder", "id former", "visual projections", "<new1>"):
        assert f"{label}: not loaded (build_stack's init)" in summary, summary
    # The base model itself is not optional: a directory without the VAE stops the run naming it.
    base = tmp_path / "base"
    shutil.copytree(files["base"], base)
    shutil.rmtree(base / "vae")
    with pytest.raises(WeightsError, match=r"^vae: .*/base/vae missing"):
        load_checkpoints(_config(), base, [], None, partial=True)


def test_export_cli_stops_with_the_loader_error(files, capsys) -> None:
    with pytest.raises(SystemExit) as err:
        main(["--size", "sd2", "--base", str(files["base"]), "--pva", str(files["fpip"]), "--out", "/nonexistent"])
    assert err.value.code == 2
    assert "unet/config.json: block_out_channels = (32, 64), this exporter builds (320, 640, 1280, 1280)" \
        in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--size", "sd2", "--random-weights", "--pva", str(files["fpip"]), "--out", "/nonexistent"])
    assert "--pva/--face/--allow-init need --base" in capsys.readouterr().err
