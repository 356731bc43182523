import pytest
import torch

from conftest import TINY_IMAGE_SIZE, tiny_config
from modeling_cliptt5 import CLIPT5ForConditionalGeneration


def make_model(**overrides):
    torch.manual_seed(0)
    return CLIPT5ForConditionalGeneration(tiny_config(**overrides)).eval()


def pixels(batch, views=None, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE) if views is None else (batch, views, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    return torch.randn(shape, generator=generator)


LABELS = torch.tensor([[5, 6, 7, 1], [8, 9, 1, -100]])


@pytest.mark.parametrize(
    "overrides, tokens_per_view",
    [({}, 17), ({"image_token_pooling": 2}, 5), ({"image_tokens": "pooled"}, 1), ({"projector_type": "mlp"}, 17)],
)
def test_image_tokens_reach_t5_in_the_configured_number(overrides, tokens_per_view):
    model = make_model(**overrides)
    image_embeds = model.get_image_features(pixels(2))
    assert image_embeds.shape == (2, tokens_per_view, model.config.d_model)
    assert model.config.num_image_tokens_per_view == tokens_per_view


def test_loss_and_logits_shapes():
    model = make_model()
    output = model(pixel_values=pixels(2), labels=LABELS)
    assert output.logits.shape == (2, 4, model.config.vocab_size)
    assert torch.isfinite(output.loss) and output.loss > 0


def test_two_views_use_view_embeddings_and_order_matters():
    model = make_model(num_views=2)
    both = pixels(1, views=2)
    swapped = both.flip(1)
    first = model.get_image_features(both)
    assert first.shape == (1, 2 * 17, model.config.d_model)
    # Same pixels in swapped order give other encoder inputs, because each view has its own embedding.
    assert not torch.allclose(first, model.get_image_features(swapped))
    assert model(pixel_values=both, labels=LABELS[:1]).loss.isfinite()


def test_padded_prompt_gives_the_same_result_as_unpadded():
    model = make_model()
    images = pixels(1)
    prompt = torch.tensor([[11, 12, 13]])
    padded = torch.tensor([[11, 12, 13, 0, 0]])
    padded_mask = torch.tensor([[1, 1, 1, 0, 0]])
    labels = LABELS[:1]
    plain = model(pixel_values=images, input_ids=prompt, labels=labels)
    with_padding = model(pixel_values=images, input_ids=padded, attention_mask=padded_mask, labels=labels)
    torch.testing.assert_close(plain.logits, with_padding.logits, atol=1e-5, rtol=1e-5)
    no_prompt = model(pixel_values=images, labels=labels)
    assert not torch.allclose(plain.logits, no_prompt.logits)


def test_forward_with_encoder_outputs_and_no_pixels_matches_full_forward():
    model = make_model()
    images = pixels(2)
    full = model(pixel_values=images, labels=LABELS)
    inputs_embeds, mask = model.build_encoder_inputs(images)
    encoder_outputs = model.get_encoder()(inputs_embeds=inputs_embeds, attention_mask=mask)
    second = model(encoder_outputs=encoder_outputs, attention_mask=mask, labels=LABELS)
    torch.testing.assert_close(full.logits, second.logits)


def test_cached_vision_features_give_the_same_loss():
    model = make_model(image_token_pooling=2)
    images = pixels(2)
    features = model.get_vision_features(images)
    assert features.shape == (2, 1, 5, 32)
    torch.testing.assert_close(
        model(pixel_values=images, labels=LABELS).loss, model(vision_features=features, labels=LABELS).loss
    )


def test_generate_from_image_alone_and_with_the_usual_options():
    model = make_model()
    images = pixels(2)
    greedy = model.generate(pixel_values=images, max_new_tokens=6)
    assert greedy.shape[0] == 2 and greedy.shape[1] <= 7 and (greedy[:, 0] == 0).all()
    beams = model.generate(pixel_values=images, num_beams=3, num_return_sequences=2, max_new_tokens=6)
    assert beams.shape[0] == 4
    sampled = model.generate(pixel_values=images, do_sample=True, top_k=5, max_new_tokens=6, min_new_tokens=6)
    assert sampled.shape == (2, 7)
    no_repeat = model.generate(pixel_values=images, no_repeat_ngram_size=1, max_new_tokens=8, min_new_tokens=8)
    for row in no_repeat[:, 1:].tolist():
        assert len(row) == len(set(row)), row
    # generate() decodes exactly as forward scores: the greedy first token is forward's argmax.
    start = torch.zeros(2, 1, dtype=torch.long)
    first_logits = model(pixel_values=images, decoder_input_ids=start).logits[:, -1]
    assert torch.equal(greedy[:, 1], first_logits.argmax(-1))


def test_generate_with_prompt_differs_from_image_only():
    model = make_model()
    images = pixels(1)
    base = model(pixel_values=images, decoder_input_ids=torch.zeros(1, 1, dtype=torch.long)).logits
    prompted = model(pixel_values=images, input_ids=torch.tensor([[20, 21, 22]]),
                     decoder_input_ids=torch.zeros(1, 1, dtype=torch.long)).logits
    assert not torch.allclose(base, prompted)
    assert model.generate(pixel_values=images, input_ids=torch.tensor([[20, 21, 22]]), max_new_tokens=3).shape[0] == 1


@pytest.mark.parametrize(
    "bad_pixels, message",
    [
        (torch.randn(3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE), "shape"),
        (torch.randn(1, 1, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE), "shape"),
        (torch.randn(1, 3, 64, 64), "shape"),
        (torch.randn(1, 2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE), "1 view"),
        ([[0.0]], "tensor"),
    ],
)
def test_bad_pixel_values_are_refused_with_a_clear_error(bad_pixels, message):
    model = make_model()
    with pytest.raises(ValueError, match=message):
        model(pixel_values=bad_pixels, labels=LABELS[:1])


def test_missing_image_and_overlong_prompt_are_refused():
    model = make_model(max_prompt_tokens=4)
    with pytest.raises(ValueError, match="needs an image"):
        model(input_ids=torch.tensor([[5, 6]]), labels=LABELS[:1])
    with pytest.raises(ValueError, match="pixel_values"):
        model.generate(max_new_tokens=3)
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        model(pixel_values=pixels(1), input_ids=torch.arange(2, 8)[None], labels=LABELS[:1])
    with pytest.raises(ValueError, match="one prompt per study"):
        model(pixel_values=pixels(2), input_ids=torch.tensor([[5, 6]]), labels=LABELS)


def test_a_few_steps_learn_to_tell_two_images_apart():
    model = make_model()
    model.train()
    images = pixels(2, seed=1)
    labels = torch.tensor([[5, 6, 1], [7, 8, 1]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = model(pixel_values=images, labels=labels).loss
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert loss.item() < first / 5
    generated = model.generate(pixel_values=images, max_new_tokens=3)
    assert generated[:, 1:].tolist() == labels.tolist()


def test_save_and_load_round_trip_in_process(tmp_path):
    model = make_model(num_views=2, projector_type="mlp")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))
    loaded = CLIPT5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    images = pixels(2, views=2)
    torch.testing.assert_close(model(pixel_values=images, labels=LABELS).logits,
                               loaded(pixel_values=images, labels=LABELS).logits)
    assert loaded.lm_head.weight.data_ptr() == loaded.shared.weight.data_ptr()


@pytest.mark.parametrize("overrides", [{}, {"projector_type": "mlp", "num_views": 2}, {"image_tokens": "pooled"}])
def test_fresh_projection_layers_have_their_intended_scale(overrides):
    # Image tokens must enter T5 at about the scale of its own hidden states: a projection drawn with std 1.0
    # (what transformers v5's init order gave before) makes them ~10x too large.
    torch.manual_seed(0)
    model = CLIPT5ForConditionalGeneration(tiny_config(**overrides))
    layers = [layer for layer in model.clip_projection.layers if isinstance(layer, torch.nn.Linear)]
    layers += [model.visual_projection] if model.visual_projection is not None else []
    for layer in layers:
        assert layer.weight.std().item() == pytest.approx(layer.in_features**-0.5, rel=0.25)
        assert not layer.bias.any() if layer.bias is not None else True
    if model.clip_projection.view_embeddings is not None:
        assert model.clip_projection.view_embeddings.weight.std().item() == pytest.approx(0.02, rel=0.25)
