"""Studies unlike the training images: a phantom-trained release carries a summary of its training images, flags
foreign images (noise, textures, inverted or rotated radiographs, a CT-like slice, blank frames) and hardly any of
its own test phantoms; generate.py writes the score and flag, --refuse-ood refuses flagged studies, the page warns,
the ONNX fast path scores as PyTorch does, and releases without a summary still draft with a note."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_cliptt5.inference.drafting import load_release
from modeling_cliptt5.inference.ood import OOD_FILE, fit_summary, image_vectors, load_summary
from modeling_cliptt5.data.phantom import make_phantom_dataset
from modeling_cliptt5.training.generation import train_generation
from modeling_cliptt5.training.config import config_from_dict
from training_helpers import tiny_settings

from modeling_cliptt5.cli import generate

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_test")
SIZE = 64


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ood_data") / "phantoms"
    make_phantom_dataset(2000, seed=11, image_size=SIZE, split_fractions=(0.6, 0.2, 0.2)).save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="module")
def release(phantoms, tmp_path_factory):
    output = tmp_path_factory.mktemp("ood_run")
    result = train_generation(config_from_dict(tiny_settings(phantoms, output, max_steps=6, train_vision="all")))
    return result.release_dir


def test_fit_summary_scores_its_own_distribution_near_one_and_a_shifted_one_far_away():
    rng = torch.Generator().manual_seed(0)
    directions = torch.randn(8, 40, generator=rng)
    def draw(count, shift=0.0):
        return torch.randn(count, 8, generator=rng) @ directions + 0.1 * torch.randn(count, 40, generator=rng) + shift
    summary = fit_summary(draw(2000), draw(500)[:, None])
    own = summary.image_scores(draw(500))
    assert 0.8 < float(own.mean()) < 1.2  # a squared distance per dimension: ~1 for the training distribution
    assert float(summary.image_scores(draw(200, shift=3.0)).min()) > 10 * summary.threshold
    assert summary.quantiles[0.5] < summary.quantiles[0.99] == summary.threshold


def foreign_images(own):
    """What a phantom-trained model must not take for one of its radiographs."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:SIZE, :SIZE]

    def ct_slice(seed):  # an axial body outline with round organs and a bright vertebra on black
        r = np.random.default_rng(seed)
        pixels = np.zeros((SIZE, SIZE))
        pixels[((x - 32) / 28) ** 2 + ((y - 34) / 20) ** 2 < 1] = 0.45 + 0.1 * r.random()
        for _ in range(4):
            cx, cy, radius = r.integers(15, 50), r.integers(20, 48), r.integers(3, 8)
            pixels[(x - cx) ** 2 + (y - cy) ** 2 < radius ** 2] = r.random()
        pixels[((x - 32) / 6) ** 2 + ((y - 46) / 5) ** 2 < 1] = 1.0
        return Image.fromarray((pixels * 255).astype(np.uint8))

    return {
        "noise": [Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)) for _ in range(10)],
        "colour noise": [Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)) for _ in range(10)],
        "stripes": [Image.fromarray((127 + 120 * np.sin(x * f)).astype(np.uint8)) for f in np.linspace(0.2, 2, 10)],
        "checkerboard": [Image.fromarray((((x + y) // k) % 2 * 255).astype(np.uint8)) for k in range(2, 12)],
        "inverted radiograph": [Image.fromarray(255 - np.asarray(image.convert("L"))) for image in own[:10]],
        "rotated radiograph": [image.rotate(angle) for image in own[:5] for angle in (90, 180)],
        "CT-like slice": [ct_slice(seed) for seed in range(10)],
        "blank frame": [Image.new("L", (SIZE, SIZE), level) for level in (0, 128, 255)],
    }


def scores_of(release, images):
    pixels = release.processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        return release.ood_summary.study_scores(image_vectors(release.model.get_vision_features(pixels)))


def test_the_release_flags_foreign_images_and_few_of_its_own_test_phantoms(release, phantoms):
    from datasets import load_from_disk

    summary = load_summary(release)
    assert summary is not None and summary.training_images == 1200 and summary.validation_studies == 400
    # the release was finished in one place: its card, filled after the summary, tells a reader where the flag sits
    card = " ".join((Path(release) / "README.md").read_text().split())
    assert (f"flagged (`ood_flag`) beyond ood_score {summary.threshold:.2f} (the 99th percentile of 400 validation "
            f"studies, against a summary of 1200 training images)") in card
    loaded = load_release(release)
    own = [row["images"][0] for row in load_from_disk(str(phantoms))["test"]]
    own_flagged = loaded.ood_summary.flags(scores_of(loaded, own)).float().mean().item()
    # The flag sits at the 99th percentile of 400 validation studies: about 1% of the 400 exchangeable test
    # studies lie beyond it, give or take the draw (binomial spread ~0.5%).
    print(f"own test phantoms flagged: {own_flagged:.4f}")
    assert own_flagged <= 0.02, own_flagged
    flagged = {kind: loaded.ood_summary.flags(scores_of(loaded, images)).float().mean().item()
               for kind, images in foreign_images(own).items()}
    total = sum(flagged[kind] * len(images) for kind, images in foreign_images(own).items())
    print(f"foreign images flagged: {flagged}")
    assert total / sum(len(images) for images in foreign_images(own).values()) >= 0.95, flagged


def write_study(folder, name, image):
    folder.mkdir(exist_ok=True)
    image.save(folder / f"{name}.png")
    return folder / f"{name}.png"


def test_generate_writes_score_and_flag_and_refuse_ood_refuses_the_foreign_study(release, phantoms, tmp_path, capsys):
    from datasets import load_from_disk

    inputs = tmp_path / "inputs"
    write_study(inputs, "own", load_from_disk(str(phantoms))["test"][0]["images"][0])
    write_study(inputs, "noise", Image.fromarray(np.random.default_rng(1).integers(0, 256, (SIZE, SIZE), np.uint8)))
    output = tmp_path / "drafts.jsonl"
    assert generate.main(["--model", str(release), str(inputs), "--output", str(output), "--max-new-tokens", "4"]) == 0
    rows = {row["id"]: row for row in map(json.loads, output.read_text().splitlines())}
    assert rows["noise"]["ood_flag"] is True and rows["own"]["ood_flag"] is False
    assert rows["noise"]["ood_score"] > rows["own"]["ood_score"]
    capsys.readouterr()

    assert generate.main(["--model", str(release), str(inputs), "--output", str(output), "--max-new-tokens", "4",
                          "--refuse-ood"]) == 1
    refused = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(row["id"], row["status"]) for row in refused] == [("noise", "refused"), ("own", "drafted")]
    assert refused[0]["reason"].startswith("not drafted: unlike this model's training images")
    assert refused[0]["report"] == "" and refused[0]["ood_flag"] is True
    (refusal,) = [line for line in capsys.readouterr().err.splitlines() if "noise" in line]
    assert refusal.startswith("error: noise: not drafted: unlike this model's training images")


def test_the_onnx_fast_path_scores_as_pytorch_does(release, phantoms):
    from modeling_cliptt5.inference.onnx_inference import OnnxCLIPT5

    loaded = load_release(release)
    model, processor = loaded.model, loaded.processor
    images = foreign_images([Image.new("L", (SIZE, SIZE), 90)] * 10)["noise"][:3] + [Image.new("L", (SIZE, SIZE), 90)]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    engine = OnnxCLIPT5.from_pretrained(release, weights="float32")
    _, _, vectors = engine.start(pixels)
    with torch.inference_mode():
        expected = image_vectors(model.get_vision_features(pixels))
    torch.testing.assert_close(vectors, expected, atol=1e-4, rtol=1e-4)


def test_the_page_warns_above_a_draft_of_a_foreign_image(release, tmp_path):
    pytest.importorskip("gradio")
    from modeling_cliptt5.app.web_app import ReportDrafter, draft_report

    drafter = ReportDrafter.from_pretrained(release)
    noise = write_study(tmp_path, "noise", Image.fromarray(np.random.default_rng(2).integers(0, 256, (SIZE, SIZE),
                                                                                             np.uint8)))
    _, _, info, *_ = draft_report(drafter, [str(noise)], "")
    assert info.startswith("**WARNING: This image looks unlike the images this model was trained on")


def test_a_release_without_a_summary_drafts_with_a_note(tiny_release_dir, tmp_path, capsys):
    assert not (tiny_release_dir / OOD_FILE).exists()
    image = write_study(tmp_path / "inputs", "study", Image.new("L", (40, 36), 100))
    output = tmp_path / "drafts.jsonl"
    assert generate.main(["--model", str(tiny_release_dir), str(image), "--output", str(output),
                          "--max-new-tokens", "3"]) == 0
    (row,) = map(json.loads, output.read_text().splitlines())
    assert "ood_score" not in row
    assert "no summary of its training images" in capsys.readouterr().err
