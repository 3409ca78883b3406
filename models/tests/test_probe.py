"""pva.train.probe: attribute labels, the probe itself, and a run on a tiny weights file."""

from __future__ import annotations

import torch

from pva import build_stack
from pva.train import probe
from pva.train.synthetic import EditAttrs, caption, write_dataset
from pva.weights import save_trained


def test_labels_read_each_attribute_from_the_caption_phrases() -> None:
    attrs = EditAttrs.all()
    got = probe.labels([caption(a) for a in attrs])
    for name in probe.ATTRIBUTES:
        # "not smiling" contains "smiling": the phrases, not substrings, decide.
        assert got[name].tolist() == [float(getattr(a, name)) for a in attrs], name


def test_the_probe_reads_what_the_latents_carry_and_only_that() -> None:
    g = torch.Generator().manual_seed(0)
    n = 800
    y = (torch.rand(n, generator=g) < 0.5).float()
    latents = torch.randn(n, 4, 8, 8, generator=g)
    carried = latents.clone()
    rows, cols = torch.randint(0, 8, (n,), generator=g), torch.randint(0, 8, (n,), generator=g)
    carried[torch.arange(n), 2, rows, cols] += 6.0 * y  # a bright spot somewhere when the label is 1
    assert probe.probe_accuracy(carried, y, steps=300) > 0.95
    assert probe.probe_accuracy(latents, y, steps=300) < 0.7


def test_a_run_reports_probes_and_the_floor(tmp_path, capsys) -> None:
    data = tmp_path / "faces"
    write_dataset(data, seed=3, persons=6, images_per_person=4, size=64)
    save_trained(tmp_path / "w.safetensors", build_stack("tiny", seed=1).weights())
    argv = ["--weights", str(tmp_path / "w.safetensors"), "--data", str(data), "--size", "tiny",
            "--images", "24", "--persons", "2", "--steps", "3"]
    result = probe.main(argv)
    assert result["images"] == 24
    assert set(result["probe_accuracy"]) == {"smile", "beard", "glasses"}
    assert all(0.0 <= v <= 1.0 for v in result["probe_accuracy"].values())
    floor = result["floor"]
    assert floor["own_colour_error"] > 0 and {"eyes_colour_error", "glasses_accuracy"} <= set(floor)
    assert '"probe_accuracy"' in capsys.readouterr().out

