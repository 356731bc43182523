"""The change head: for a finding present in both the prior and the current study, whether it is smaller, the same or
larger, read from the two images; it picks one of three course tokens, learns from change labels, and a caller can
override it as findings override the finding head."""

import pytest
import torch

from conftest import HEAD_FINDINGS, rerandomized, tiny_config
from modeling_cliptt5 import CLIPT5Config, CLIPT5ForConditionalGeneration
from modeling_cliptt5.evaluation.changes import change_targets_from_label_lists
from modeling_cliptt5.modeling_cliptt5 import CLIPT5ChangeHead, CLIPT5PriorEmbeddings


def change_model(seed=0):
    torch.manual_seed(seed)
    config = tiny_config(finding_head=True, finding_labels=HEAD_FINDINGS, reads_prior=True, change_head=True,
                         change_head_hidden=16)
    return rerandomized(CLIPT5ForConditionalGeneration(config)).eval()


def features(model, seed, batch=1):
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    return torch.randn(batch, 1, config.num_image_tokens_per_view, config.vision_config.hidden_size,
                       generator=generator)


def course_tokens_of(model, current_statuses, current, prior, prior_changes=None):
    config = model.config
    embeds, _ = model.prior_inputs(1, torch.tensor([current_statuses]), current, prior_vision_features=prior,
                                   prior_changes=prior_changes)
    start = 1 + config.num_views * config.num_image_tokens_per_view
    return embeds[0, start:start + len(current_statuses)]


def test_change_labels_become_the_change_heads_targets():
    names = ["pleural_effusion:right", "pleural_effusion:left", "cardiomegaly", "support_device"]
    labels = [["pleural_effusion:right", "pleural_effusion:right:increased", "cardiomegaly",
               "cardiomegaly:unchanged", "support_device:new", "pleural_effusion:left:resolved"],
              ["pleural_effusion:left", "pleural_effusion:left:decreased"],
              [],
              None]
    targets = change_targets_from_label_lists(labels, names)
    assert targets.tolist() == [[2, -100, 1, -100], [-100, 0, -100, -100], [-100] * 4, [-100] * 4]


def test_a_change_head_needs_the_prior_and_the_finding_guidance():
    with pytest.raises(ValueError, match="change_head .* needs reads_prior=True"):
        CLIPT5Config(finding_head=True, finding_labels=HEAD_FINDINGS, change_head=True)
    with pytest.raises(ValueError, match="change_head .* needs reads_prior=True"):
        CLIPT5Config(reads_prior=True, change_head=True)


def test_a_finding_in_both_studies_takes_the_course_token_of_its_change():
    model = change_model()
    current, prior = features(model, 1), features(model, 2)
    prior_statuses = model.guidance_statuses(model.finding_head(prior)[0])[0].long()
    assert prior_statuses.any(), "the head finds nothing on this prior: no finding would be in both studies"
    decided = model.change_logits(current, prior).argmax(-1)[0]
    embeddings = model.prior_embeddings
    kind = embeddings.kinds.weight[CLIPT5PriorEmbeddings.FINDINGS]
    statuses = [1, 1, 1]
    for given in (None, [0, 1, 2], [2, -1, 0]):
        tokens = course_tokens_of(model, statuses, current, prior,
                                  None if given is None else torch.tensor([given]))
        for finding in range(len(statuses)):
            change = int(decided[finding]) if given is None or given[finding] < 0 else given[finding]
            expected = embeddings.courses.weight[4 * finding + 2 * int(prior_statuses[finding]) + 1] + kind
            if prior_statuses[finding]:  # present in both: plus its change (smaller, the same, larger)
                expected = expected + embeddings.changes.weight[change]
            assert torch.allclose(tokens[finding], expected, atol=1e-6), (given, finding)
    # A finding absent now takes the same token whatever the change head or the caller says.
    absent = [0, 0, 0]
    assert torch.equal(course_tokens_of(model, absent, current, prior, torch.tensor([[0, 0, 0]])),
                       course_tokens_of(model, absent, current, prior, torch.tensor([[2, 2, 2]])))


def test_given_prior_findings_replace_the_heads_decisions_on_the_prior_in_the_course_tokens(prior_release_dir):
    model = change_model()
    current, prior = features(model, 1), features(model, 2)
    decided = model.guidance_statuses(model.finding_head(prior)[0])[0].long().tolist()
    statuses = [1, 0, 1]
    embeddings = model.prior_embeddings
    kind = embeddings.kinds.weight[CLIPT5PriorEmbeddings.FINDINGS]

    def course(prior_findings):
        embeds, _ = model.prior_inputs(1, torch.tensor([statuses]), current, prior_vision_features=prior,
                                       prior_changes=torch.tensor([[1, 1, 1]]), prior_findings=prior_findings)
        start = 1 + model.config.num_views * model.config.num_image_tokens_per_view
        return embeds[0, start:start + 3]

    for given in ([1, 1, 0], [0, -1, 1], {HEAD_FINDINGS[0]: True}):
        tokens = course(torch.tensor([given]) if isinstance(given, list) else [given])
        given = [1, -1, -1] if isinstance(given, dict) else given
        for finding in range(3):
            before = decided[finding] if given[finding] < 0 else given[finding]
            expected = embeddings.courses.weight[4 * finding + 2 * before + statuses[finding]] + kind
            if before and statuses[finding]:
                expected = expected + embeddings.changes.weight[1]
            assert torch.allclose(tokens[finding], expected, atol=1e-6), (given, finding)
    with pytest.raises(ValueError, match="prior_findings describe the prior image"):
        model.prior_inputs(1, torch.tensor([statuses]), current, prior_findings=torch.tensor([[1, 1, 1]]))
    without_guidance = CLIPT5ForConditionalGeneration(tiny_config(reads_prior=True)).eval()
    with pytest.raises(ValueError, match="without finding guidance"):
        without_guidance.prior_inputs(1, None, None, prior_vision_features=features(without_guidance, 2),
                                      prior_findings=torch.tensor([[1]]))


def test_the_change_head_needs_the_current_image_and_a_model_without_it_refuses_changes(prior_release_dir):
    model = change_model()
    prior = features(model, 2)
    with pytest.raises(ValueError, match="pass the current study's vision_features"):
        model.prior_inputs(1, torch.tensor([[1, 1, 1]]), prior_vision_features=prior)
    without = CLIPT5ForConditionalGeneration.from_pretrained(prior_release_dir).eval()
    assert without.change_head is None
    with pytest.raises(ValueError, match="without a change head"):
        without.prior_inputs(1, torch.tensor([[1, 1, 1]]), features(without, 1), prior_vision_features=prior,
                             prior_changes=torch.tensor([[1, 1, 1]]))


def test_the_change_head_learns_which_study_shows_more_of_a_finding():
    """Pairs whose current image holds more of a pattern than the prior (larger), less (smaller) or as much (the
    same): trained on their change targets through forward's loss, the head tells them apart on new pairs."""
    model = change_model()
    head = model.change_head
    channels = model.config.vision_config.hidden_size
    pattern = torch.randn(channels, generator=torch.Generator().manual_seed(7))

    def pairs(count, seed):
        generator = torch.Generator().manual_seed(seed)
        base = torch.randn(count, 1, model.config.num_image_tokens_per_view, channels, generator=generator) * 0.3
        amount = torch.rand(count, generator=generator) + 0.5
        change = torch.randint(0, 3, (count,), generator=generator)
        prior = base + amount[:, None, None, None] * pattern
        current = base + (amount + 0.4 * (change - 1))[:, None, None, None] * pattern
        return current, prior, change

    current, prior, change = pairs(256, 0)
    targets = torch.full((256, len(HEAD_FINDINGS)), -100)
    targets[:, 0] = change
    model.train()
    model.requires_grad_(False)
    head.requires_grad_(True)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    labels = torch.ones(256, 2, dtype=torch.long)
    for _ in range(150):
        loss = model(vision_features=current, prior_vision_features=prior, labels=labels,
                     change_targets=targets).change_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    test_current, test_prior, test_change = pairs(256, 1)
    predicted = model.change_logits(test_current, test_prior).argmax(-1)[:, 0]
    assert (predicted == test_change).float().mean() > 0.9
    # With no target in the batch the loss is 0 and still reaches the head (one process's batch under DDP).
    nothing = model(vision_features=current[:2], prior_vision_features=prior[:2], labels=labels[:2],
                    change_targets=torch.full((2, 3), -100)).change_loss
    assert float(nothing.detach()) == 0.0 and nothing.requires_grad


def test_a_release_with_a_change_head_round_trips_and_drafts_by_its_changes(tmp_path):
    model = change_model()
    model.save_pretrained(tmp_path)
    loaded = CLIPT5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.change_head, CLIPT5ChangeHead) and loaded.config.change_head
    pixel_values, prior_pixel_values = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    findings = torch.ones(2, 3, dtype=torch.long)
    draft = model.generate(pixel_values=pixel_values, prior_pixel_values=prior_pixel_values, findings=findings,
                           max_new_tokens=12)
    assert torch.equal(draft, loaded.generate(pixel_values=pixel_values, prior_pixel_values=prior_pixel_values,
                                              findings=findings, max_new_tokens=12))
    drafts = {change: loaded.generate(pixel_values=pixel_values, prior_pixel_values=prior_pixel_values,
                                      findings=findings, prior_changes=torch.full((2, 3), change),
                                      max_new_tokens=12)
              for change in (0, 2)}
    assert not torch.equal(drafts[0], drafts[2])


@pytest.mark.parametrize("patch_channels", [0, 8])
def test_patch_differences_see_a_finding_that_spreads_where_pooling_by_its_heatmap_cannot(patch_channels):
    """A finding that covers more or fewer patches (a pneumothorax whose edge moves) looks the same once each image
    is pooled by a heatmap that picks out its patches; the differences of the patches show the change."""
    torch.manual_seed(0)
    config = tiny_config(finding_head=True, finding_labels=HEAD_FINDINGS, reads_prior=True, change_head=True,
                         change_head_hidden=32, change_head_patch_channels=patch_channels)
    model = CLIPT5ForConditionalGeneration(config).eval()
    channels, patches = config.vision_config.hidden_size, config.num_image_tokens_per_view - 1
    pattern = torch.zeros(channels)
    pattern[0] = 1.0
    with torch.no_grad():  # the head's heatmap of finding 0 is high exactly where the pattern is
        model.finding_head.layers[0].weight.zero_()
        model.finding_head.layers[0].bias.zero_()
        model.finding_head.layers[0].weight[0] = 20 * pattern

    def pairs(count, seed):
        generator = torch.Generator().manual_seed(seed)
        size = torch.randint(2, patches - 2, (count,), generator=generator)
        change = torch.randint(0, 3, (count,), generator=generator)
        def image(extent):
            features = torch.randn(count, 1, 1 + patches, channels, generator=generator) * 0.05
            features[..., 0] = 0.0
            covered = torch.arange(patches)[None] < extent[:, None]
            features[:, 0, 1:] += covered[..., None] * pattern
            return features
        return image(size + change - 1), image(size), change

    current, prior, change = pairs(512, 0)
    targets = torch.full((512, len(HEAD_FINDINGS)), -100)
    targets[:, 0] = change
    head = model.change_head
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(300):
        loss = model.change_loss(model.change_logits(current, prior), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test_current, test_prior, test_change = pairs(512, 1)
    with torch.no_grad():
        accuracy = (model.change_logits(test_current, test_prior).argmax(-1)[:, 0] == test_change).float().mean()
    if patch_channels:
        assert accuracy > 0.9
    else:
        assert accuracy < 0.6  # pooled alone: about chance between the three


def test_a_change_head_saved_without_patch_differences_loads_as_it_was(tmp_path):
    """The patch part is opt-in (the config's default is 0): a release whose config has no such key builds the head
    it was saved with, so its weights all load."""
    model = change_model()
    assert model.config.change_head_patch_channels == 0 and model.change_head.patch_differences is None
    model.save_pretrained(tmp_path)
    config = (tmp_path / "config.json").read_text()
    (tmp_path / "config.json").write_text(config.replace('"change_head_patch_channels": 0,', ""))
    assert "change_head_patch_channels" not in (tmp_path / "config.json").read_text()
    loaded = CLIPT5ForConditionalGeneration.from_pretrained(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
