"""The trainer (pva.train: cli, trainer, stages, data): masks, reference sampling, prompts, the
latent-scale calibration, the trained-weights file, an end-to-end micro run of every stage, and resume."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_DIR
from pva import build_stack
from pva.config import get_config
from pva.tokenizer import encode, render_prompt
from pva.train import cli, stages, trainer
from pva.train import data as train_data
from pva.train.synthetic import write_dataset
from pva.tuning import TuningBatch, TuningStep, alphas_cumprod
from pva.weights import load_trained, save_trained


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory):
    """A dataset directory of 5 synthetic persons x 3 images."""
    root = tmp_path_factory.mktemp("faces")
    write_dataset(root, seed=3, persons=5, images_per_person=3, size=64)
    return root


def test_random_masks_are_filled_rectangles_inside_the_image() -> None:
    masks = train_data.random_masks(400, 64, torch.Generator().manual_seed(1))
    assert masks.shape == (400, 1, 64, 64)
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    rows, cols = masks[:, 0].amax(dim=2), masks[:, 0].amax(dim=1)  # [N, 64] each
    # A rectangle is exactly the product of the rows and columns it touches, each a contiguous run.
    assert torch.equal(masks[:, 0], rows[:, :, None] * cols[:, None, :])
    for run in (rows, cols):
        first = run.argmax(dim=1)
        assert torch.equal(run.sum(dim=1), 64 - first - run.flip(1).argmax(dim=1))
    area = masks.sum(dim=(1, 2, 3))
    assert area.min() >= 16 * 16 * 0.5 and area.max() <= 48 * 48
    # About 75% are the named regions (MASK_MIX): a whole-face-sized mask (40 x 44 +- jitter) is common.
    whole = ((area >= 36 * 40) & (area <= 44 * 48)).float().mean()
    assert 0.2 < float(whole) < 0.5


def test_named_region_boxes_follow_the_contract() -> None:
    assert train_data.region_box("whole_face", 64) == (12, 16, 52, 60)
    # Halves round to even, as src/pipeline/mask.rs does (its test region_bounds_round_half_to_even).
    assert train_data.region_box("eyebrows", 112) == (24, 32, 88, 46)
    assert train_data.region_box("lower_face", 64) == (12, 36, 52, 60)
    mask = train_data.region_mask("mouth", 64)
    assert mask.sum() == (44 - 20) * (54 - 44)


def _fake_trainer(person: list[int], captions: list[str] | None = None):
    """A Trainer with only what `references` and `prompts` read."""
    t = trainer.Trainer.__new__(trainer.Trainer)
    person_t = torch.tensor(person)
    t.data = SimpleNamespace(person=person_t, captions=captions or [""] * len(person))
    t.group_table, t.group_sizes, t.slot = trainer.person_table(person_t)
    t.config = get_config("demo")
    t.device = torch.device("cpu")
    t._ids, t._prompt_tables = {}, {}
    return t


def test_references_are_other_images_of_the_same_person() -> None:
    person = [0, 1, 0, 2, 1, 0, 2, 0, 1, 1, 1]  # sizes 4, 5, 2; interleaved
    t = _fake_trainer(person)
    g = torch.Generator().manual_seed(0)
    index = torch.arange(len(person))
    for count in (1, 2, 3, 5):
        refs = t.references(index, count, g)
        assert refs.shape == (len(person), count)
        for i, row in zip(index.tolist(), refs.tolist()):
            assert i not in row and all(person[r] == person[i] for r in row)
            others = person.count(person[i]) - 1
            if count <= others:
                assert len(set(row)) == count  # no repeats while there are enough
            else:
                assert len(set(row)) == others  # cycles through all of them
    # The order is random: over many draws every other image comes first sometimes.
    firsts = {int(t.references(torch.tensor([0]), 1, g)[0, 0]) for _ in range(60)}
    assert firsts == {2, 5, 7}


def test_prompts_wrap_captions_and_drop_some() -> None:
    t = _fake_trainer([0, 0, 1, 1], ["smiling", "with a beard", "with glasses", ""])
    g = torch.Generator().manual_seed(0)
    template = "a <new1> person {prompt}"
    ids = t.prompts(torch.tensor([1, 2]), template, 0.0, g)
    for row, caption in zip(ids, ["with a beard", "with glasses"]):
        assert row.tolist() == encode(render_prompt(template, caption), t.config.tokenizer)
    dropped = t.prompts(torch.tensor([1, 2, 0]), template, 1.0, g, dropped="")
    assert all(row.tolist() == encode("", t.config.tokenizer) for row in dropped)
    half = t.prompts(torch.zeros(400, dtype=torch.int64), template, 0.5, g, dropped="")
    share = float((half == torch.tensor(encode("", t.config.tokenizer))).all(dim=1).float().mean())
    assert 0.4 < share < 0.6


def test_latent_scale_calibration_keeps_decoding_and_gives_unit_std() -> None:
    stack = build_stack("demo", seed=0)
    vae = stack.vae.eval()
    pixels = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        first = vae.encode(pixels).latent_dist
        before = vae.decode(first.mean).sample
        k = stages.calibrate_latent_scale(vae, pixels, 0.18215)
        posterior = vae.encode(pixels).latent_dist
        after = vae.decode(posterior.mean).sample
    assert k > 0 and not math.isclose(k, 1.0, rel_tol=1e-3)
    assert torch.allclose(before, after, atol=1e-4)
    assert float((posterior.mean * 0.18215).std()) == pytest.approx(1.0, rel=1e-3)
    # The log-variance moved with the mean: the posterior's std scales by k too.
    assert torch.allclose(posterior.std, first.std * k, rtol=1e-4)


def test_detail_weighting_charges_errors_on_edges_more_than_on_flat_areas() -> None:
    x = torch.full((1, 3, 16, 16), -0.5)
    x[:, :, 8, :] = 0.8  # a thin line, like a pair of glasses
    weights = stages.detail_weights(x, 10.0)
    assert weights.shape == (1, 1, 16, 16)
    assert weights[0, 0, 8, 5] > 5 * weights[0, 0, 2, 5] and torch.allclose(weights[0, 0, 2], torch.ones(16))
    assert torch.equal(stages.detail_weights(torch.zeros(1, 3, 4, 4), 10.0), torch.ones(1, 1, 4, 4))
    on_line, on_flat = x.clone(), x.clone()
    on_line[:, :, 8, 3] -= 0.5
    on_flat[:, :, 2, 3] -= 0.5
    plain = [stages.reconstruction_loss(r, x)[0] for r in (on_line, on_flat)]
    weighted = [stages.reconstruction_loss(r, x, 10.0)[0] for r in (on_line, on_flat)]
    assert torch.isclose(plain[0], plain[1])  # plain MSE + L1 cannot tell where the error is
    assert weighted[0] > 5 * weighted[1]
    # detail 0 is the plain loss; the progress line's MSE is unweighted either way
    assert stages.reconstruction_loss(on_line, x, 0.0)[0] == plain[0]
    assert stages.reconstruction_loss(on_line, x, 10.0)[1] == stages.reconstruction_loss(on_line, x)[1]


def test_trained_weights_round_trip(tmp_path) -> None:
    stack = build_stack("demo", seed=4)
    weights = stack.weights(torch.arange(32, dtype=torch.float32))
    save_trained(tmp_path / "w.safetensors", weights)
    loaded = load_trained(tmp_path / "w.safetensors")
    rebuilt = build_stack("demo", seed=99, weights=loaded)
    for name, tensor in stack.unet.state_dict().items():
        assert torch.equal(rebuilt.unet.state_dict()[name], tensor), name
    assert torch.equal(rebuilt.split_params(rebuilt.initial_params)[1], weights["new1_embedding"])
    flat = load_file(str(tmp_path / "w.safetensors"))
    flat["extra.thing"] = torch.zeros(1)
    from safetensors.torch import save_file

    save_file(flat, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="unexpected tensor 'extra.thing'"):
        load_trained(tmp_path / "bad.safetensors")


def test_v_prediction_tuning_loss_targets_the_velocity() -> None:
    stack = build_stack("demo", seed=0)
    step = TuningStep.from_stack(stack)
    assert step.prediction_type == "v_prediction"
    g = torch.Generator().manual_seed(5)
    d = stack.config.hidden_size
    batch = TuningBatch(
        input_ids=torch.tensor([encode("a <new1> person", stack.config.tokenizer)]),
        latents=torch.randn(1, 4, 8, 8, generator=g),
        noise=torch.randn(1, 4, 8, 8, generator=g),
        timesteps=torch.tensor([700]),
        mask=torch.ones(1, 1, 8, 8),
        masked_latents=torch.zeros(1, 4, 8, 8),
        id_tokens=torch.randn(1, 10, d, generator=g),
    )
    params = stack.initial_params
    with torch.no_grad():
        loss = step.loss(params, batch)
        visual, token = torch.split(params, [stack.visual_length, stack.token_length])
        acp = alphas_cumprod(stack.scheduler_config)[700]
        noisy = acp.sqrt() * batch.latents + (1 - acp).sqrt() * batch.noise
        pred = stack.unet_graph(torch.cat([noisy, batch.mask, batch.masked_latents], 1), torch.tensor([700.0]),
                                stack.text_encoder(batch.input_ids, token), batch.id_tokens, torch.ones(1), visual)
    velocity = acp.sqrt() * batch.noise - (1 - acp).sqrt() * batch.latents
    assert float(loss) == pytest.approx(float(((pred - velocity) ** 2).mean()), rel=1e-5)
    assert float(loss) != pytest.approx(float(((pred - batch.noise) ** 2).mean()), rel=1e-3)


def _run(faces, work, *extra: str) -> None:
    cli.main(["run", "--size", "demo", "--data", str(faces), "--work", str(work), "--threads", "1",
              "--log-every", "1", "--save-seconds", "1e9", *extra])


SMALL = [f"--set={s}.batch=2" for s in stages.STAGES] + [f"--set={s}.warmup=1" for s in stages.STAGES]


def test_every_stage_trains_and_exports(faces, tmp_path, capsys) -> None:
    work = tmp_path / "work"
    every = ("--stages", ",".join(stages.STAGES), *[f"--set={s}.steps=2" for s in stages.STAGES])
    _run(faces, work, *SMALL, *every)
    out = capsys.readouterr().out
    assert "data: 15 images of 5 persons at 64px" in out
    for stage in stages.STAGES:
        assert f"[{stage}] finished 2 steps" in out
        state = torch.load(work / f"{stage}.pt", weights_only=False)
        assert state["done"] and state["step"] == 2
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in log] == [(s, i) for s in stages.STAGES for i in (1, 2)]
    assert all(math.isfinite(r["loss"]) for r in log)
    weights = load_trained(work / "weights.safetensors")
    # base finished by copying the trained text projections into the identity branch
    unet = weights["unet"]
    q = [k for k in unet if k.endswith("to_visual_q.weight")]
    assert q and all(not torch.equal(unet[k], unet[k.replace("to_visual_q", "to_q")]) for k in q)  # pva moved them
    # a rerun finds every stage done and changes nothing
    _run(faces, work, *SMALL, *every)
    out = capsys.readouterr().out
    assert [f"[{s}] done earlier (2 steps); skipped" in out for s in stages.STAGES] == [True] * len(stages.STAGES)
    for key, value in load_trained(work / "weights.safetensors")["unet"].items():
        assert torch.equal(value, unet[key]), key
    # export through the unchanged contract (without the slow tuning graph)
    model = tmp_path / "model"
    cli.main(["export", "--size", "demo", "--work", str(work), "--out", str(model), "--no-adapter-step"])
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["name"] == "pva-demo" and "adapter_step" not in manifest["graphs"]
    assert manifest["scheduler"]["prediction_type"] == "v_prediction"
    assert set(manifest["graphs"]) == {"text_encoder", "face_embedder", "id_former", "unet", "vae_encoder",
                                      "vae_decoder"}


def test_an_interrupted_stage_resumes_exactly(faces, tmp_path) -> None:
    args = (*SMALL, "--stages", "base", "--set=base.steps=4")
    _run(faces, tmp_path / "once", *args)
    with pytest.raises(SystemExit, match="time limit reached at step 1; rerun to resume"):
        _run(faces, tmp_path / "twice", *args, "--minutes", "0")
    assert torch.load(tmp_path / "twice" / "base.pt", weights_only=False)["step"] == 1
    _run(faces, tmp_path / "twice", *args)
    once = load_trained(tmp_path / "once" / "weights.safetensors")
    twice = load_trained(tmp_path / "twice" / "weights.safetensors")
    for group in ("unet", "text_encoder"):
        for key, value in once[group].items():
            assert torch.equal(value, twice[group][key]), (group, key)
    assert not torch.equal(once["unet"]["conv_in.weight"], build_stack("demo", seed=0).unet.state_dict()["conv_in.weight"])


def test_a_model_directory_imports_and_trains_its_decoder_for_the_frozen_encoder(faces, tmp_path, capsys) -> None:
    """`import` recovers weights that reproduce the tiny model's graphs; the `decoder` stage then moves
    the decoder only, so the latent space (encoder) that the UNet was trained in stays exactly as it was."""
    work = tmp_path / "work"
    cli.main(["import", "--size", "tiny", "--model", str(TINY_DIR), "--work", str(work)])
    assert "graphs reproduced within" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="exists"):
        cli.main(["import", "--size", "tiny", "--model", str(TINY_DIR), "--work", str(work)])
    before = load_trained(work / "weights.safetensors")
    _run(faces, work, *SMALL, "--size", "tiny", "--stages", "decoder", "--set=decoder.steps=3",
         "--set=decoder.batch=4")
    after = load_trained(work / "weights.safetensors")
    moved = {k for k in before["vae"] if not torch.equal(before["vae"][k], after["vae"][k])}
    assert moved and all(k.startswith(("decoder.", "post_quant_conv.")) for k in moved)
    assert any(k.startswith("decoder.") for k in moved)
    for group in ("unet", "text_encoder", "id_former", "face_embedder"):
        assert all(torch.equal(v, after[group][k]) for k, v in before[group].items()), group


def test_a_directory_without_a_tuning_graph_gets_one_that_shares_its_weights(tmp_path, capsys) -> None:
    """`export --no-adapter-step` at another resolution, then `tuning-graph`: the graph is exported at
    the directory's resolution and stores nothing the UNet and text encoder have (pva.share)."""
    work = tmp_path / "work"
    cli.main(["import", "--size", "tiny", "--model", str(TINY_DIR), "--work", str(work)])
    model = tmp_path / "model"
    cli.main(["export", "--size", "tiny", "--work", str(work), "--out", str(model), "--no-adapter-step",
              "--resolution", "32"])
    assert json.loads((model / "manifest.json").read_text())["resolution"] == 32
    assert not (model / "frozen_weights.bin").exists()
    capsys.readouterr()
    cli.main(["tuning-graph", "--size", "tiny", "--work", str(work), "--model", str(model)])
    assert "sharing" in capsys.readouterr().out
    manifest = json.loads((model / "manifest.json").read_text())
    step = manifest["graphs"]["adapter_step"]
    assert [x["file"] for x in step["external_data"]] == ["frozen_weights.bin"]
    latents = next(t for t in step["inputs"] if t["name"] == "latents")
    assert latents["shape"][2:] == [4, 4]
    assert (model / "adapter_step.onnx").stat().st_size < 1_000_000
    with pytest.raises(SystemExit, match="has a tuning graph already"):
        cli.main(["tuning-graph", "--size", "tiny", "--work", str(work), "--model", str(model)])
