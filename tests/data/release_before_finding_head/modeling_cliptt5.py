"""CLIP-T5: BiomedCLIP image tokens, projected to T5's width, read by a T5 encoder-decoder that writes the report.

The image tower is transformers' `ViTModel` (BiomedCLIP's timm ViT-B/16 converts to it exactly, see
conversion/convert_biomedclip_t5.py), so a release needs only torch and transformers. Image tokens meet the
language model as in transformers' LLaVA / BLIP-2: they are projected (`clip_projection`) and enter the T5
encoder through `inputs_embeds`, followed by the token embeddings of an optional text prompt.
"""

import torch
from torch import nn
from transformers import T5ForConditionalGeneration, ViTModel

from .configuration_cliptt5 import CLIPT5Config

try:  # transformers >= 5: these helpers leave weights that were loaded from a checkpoint alone
    from transformers import initialization as init
except ImportError:  # transformers 4.x initialises only missing weights itself
    init = nn.init


class CLIPT5Projector(nn.Module):
    """Maps vision-tower tokens to T5's d_model (Linear, or Linear-GELU-Linear as in LLaVA-1.5), adding a learned
    view embedding when a study has several views, so T5 can tell the frontal from the lateral image."""

    def __init__(self, config):
        super().__init__()
        in_features = config.clip_projection_dim if config.image_tokens == "pooled" else config.vision_config.hidden_size
        if config.projector_type == "linear":
            self.layers = nn.Sequential(nn.Linear(in_features, config.d_model))
        else:
            self.layers = nn.Sequential(
                nn.Linear(in_features, config.d_model), nn.GELU(), nn.Linear(config.d_model, config.d_model)
            )
        self.view_embeddings = nn.Embedding(config.num_views, config.d_model) if config.num_views > 1 else None

    def forward(self, vision_features):
        """[batch, views, tokens, channels] -> [batch, views * tokens, d_model]."""
        image_embeds = self.layers(vision_features)
        if self.view_embeddings is not None:
            image_embeds = image_embeds + self.view_embeddings.weight[None, :, None, :]
        return image_embeds.flatten(1, 2)


class CLIPT5ForConditionalGeneration(T5ForConditionalGeneration):
    """T5ForConditionalGeneration whose encoder reads image tokens (and an optional prompt) instead of text alone.

    `forward(pixel_values=..., labels=...)` gives the usual seq2seq loss; `generate(pixel_values=...)` drafts a
    report from the image alone; every option of `generate()` keeps its meaning.
    """

    config_class = CLIPT5Config
    _no_split_modules = ["T5Block", "ViTLayer"]

    def __init__(self, config):
        super().__init__(config)
        self.vision_model = ViTModel(config.vision_config, add_pooling_layer=False)
        # CLIP's image projection (768 -> 512, no bias): kept only when T5 reads the pooled CLIP embedding.
        self.visual_projection = (
            nn.Linear(config.vision_config.hidden_size, config.clip_projection_dim, bias=False)
            if config.image_tokens == "pooled"
            else None
        )
        self.clip_projection = CLIPT5Projector(config)
        self.post_init()

    def _init_weights(self, module):
        # Leaf modules are initialised before their parents and a weight is initialised only once (transformers
        # v5), so the projection layers are matched here, as leaves: a rule on CLIPT5Projector itself would come
        # too late and leave them at T5's default std of initializer_factor (1.0), ten times too large.
        if isinstance(module, nn.Linear) and any(module is layer for layer in self._projection_layers()):
            init.normal_(module.weight, mean=0.0, std=module.in_features**-0.5)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding) and module is getattr(getattr(self, "clip_projection", None),
                                                                    "view_embeddings", None):
            init.normal_(module.weight, mean=0.0, std=0.02)
        else:
            super()._init_weights(module)

    def _projection_layers(self):
        # T5's __init__ already runs post_init(), before these modules exist
        projector, visual_projection = getattr(self, "clip_projection", None), getattr(self, "visual_projection", None)
        layers = [layer for layer in projector.layers if isinstance(layer, nn.Linear)] if projector is not None else []
        return layers + ([visual_projection] if visual_projection is not None else [])

    def _check_pixel_values(self, pixel_values):
        """Returns pixel_values as [batch, views, channels, height, width] or raises a ValueError saying why not."""
        vision = self.config.vision_config
        expected = f"[batch, {vision.num_channels}, {vision.image_size}, {vision.image_size}]"
        if self.config.num_views > 1:
            expected += f" or [batch, {self.config.num_views}, {vision.num_channels}, {vision.image_size}, {vision.image_size}]"
        if not torch.is_tensor(pixel_values) or pixel_values.dim() not in (4, 5):
            shape = tuple(pixel_values.shape) if torch.is_tensor(pixel_values) else type(pixel_values).__name__
            raise ValueError(f"pixel_values must be a tensor of shape {expected}, got {shape}")
        given_shape = tuple(pixel_values.shape)
        if pixel_values.dim() == 4:
            pixel_values = pixel_values.unsqueeze(1)
        _, views, channels, height, width = pixel_values.shape
        if channels != vision.num_channels or height != vision.image_size or width != vision.image_size:
            raise ValueError(f"pixel_values must have shape {expected} (use CLIPT5Processor), got {given_shape}")
        if views != self.config.num_views:
            raise ValueError(
                f"this model reads {self.config.num_views} view(s) per study, pixel_values has {views}"
            )
        return pixel_values

    def get_vision_features(self, pixel_values):
        """Vision-tower tokens before `clip_projection`: [batch, views, tokens, channels].

        This is all the model computes from pixels, so a frozen tower's output can be cached and passed back as
        `vision_features=` to `forward` / `generate`.
        """
        pixel_values = self._check_pixel_values(pixel_values)
        batch, views = pixel_values.shape[:2]
        images = pixel_values.flatten(0, 1).to(self.vision_model.dtype)
        hidden = self.vision_model(pixel_values=images).last_hidden_state  # after the final LayerNorm
        if self.config.image_tokens == "pooled":
            # open_clip's BiomedCLIP embedding: the CLS token after the final norm, through the image projection
            tokens = self.visual_projection(hidden[:, :1])
        else:
            tokens = self._pool_patch_tokens(hidden)
        return tokens.unflatten(0, (batch, views))

    def _pool_patch_tokens(self, hidden):
        """Average-pools the patch grid by `image_token_pooling` per side; the CLS token is kept as it is."""
        factor = self.config.image_token_pooling
        if factor == 1:
            return hidden
        cls_token, patches = hidden[:, :1], hidden[:, 1:]
        grid = int(patches.shape[1] ** 0.5)
        patches = patches.transpose(1, 2).unflatten(2, (grid, grid))
        patches = nn.functional.avg_pool2d(patches, factor).flatten(2).transpose(1, 2)
        return torch.cat([cls_token, patches], dim=1)

    def get_image_features(self, pixel_values):
        """Image tokens as T5 sees them: [batch, views * tokens, d_model]."""
        return self.clip_projection(self.get_vision_features(pixel_values))

    def build_encoder_inputs(self, pixel_values=None, input_ids=None, attention_mask=None, vision_features=None):
        """Returns (inputs_embeds, attention_mask) for the T5 encoder: image tokens, then the prompt tokens."""
        if vision_features is None:
            if pixel_values is None:
                raise ValueError("CLIP-T5 needs an image: pass pixel_values (or cached vision_features)")
            vision_features = self.get_vision_features(pixel_values)
        image_embeds = self.clip_projection(vision_features.to(self.dtype))
        batch = image_embeds.shape[0]
        image_mask = torch.ones(batch, image_embeds.shape[1], dtype=torch.long, device=image_embeds.device)
        if input_ids is None:
            return image_embeds, image_mask
        if input_ids.shape[0] != batch:
            raise ValueError(f"{input_ids.shape[0]} prompts for {batch} images: pass one prompt per study")
        if input_ids.shape[1] > self.config.max_prompt_tokens:
            raise ValueError(
                f"prompt has {input_ids.shape[1]} tokens, more than max_prompt_tokens="
                f"{self.config.max_prompt_tokens}; CLIPT5Processor truncates prompts to that length"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        prompt_embeds = self.get_input_embeddings()(input_ids)
        inputs_embeds = torch.cat([image_embeds, prompt_embeds], dim=1)
        return inputs_embeds, torch.cat([image_mask, attention_mask.to(image_mask.dtype)], dim=1)

    def forward(
        self,
        pixel_values=None,
        input_ids=None,
        attention_mask=None,
        vision_features=None,
        encoder_outputs=None,
        inputs_embeds=None,
        **kwargs,
    ):
        r"""
        pixel_values (`torch.FloatTensor` of shape `[batch, 3, H, W]` or `[batch, views, 3, H, W]`):
            Images from CLIPT5Processor. Not needed when `encoder_outputs` are given (as `generate()` does after
            its first step) or when `vision_features` (cached `get_vision_features` output) are given.
        input_ids, attention_mask:
            The optional text prompt that follows the image tokens (padded prompts need their mask).
        Other arguments (labels, decoder_input_ids, ...) are T5ForConditionalGeneration's.
        """
        if encoder_outputs is None and inputs_embeds is None:
            inputs_embeds, attention_mask = self.build_encoder_inputs(
                pixel_values, input_ids, attention_mask, vision_features
            )
        return super().forward(
            input_ids=None,
            attention_mask=attention_mask,
            encoder_outputs=encoder_outputs,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )

    @torch.no_grad()
    def generate(self, pixel_values=None, input_ids=None, attention_mask=None, vision_features=None, **kwargs):
        """Drafts reports. `generate(pixel_values=...)` needs no text; a prompt (input_ids) is optional.

        All keyword arguments of `GenerationMixin.generate` (num_beams, do_sample, max_new_tokens,
        no_repeat_ngram_size, generation_config, ...) work as usual.
        """
        if pixel_values is None and vision_features is None:
            if "inputs_embeds" in kwargs or "encoder_outputs" in kwargs:
                return super().generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            raise ValueError("CLIP-T5 drafts a report from an image: pass pixel_values (or vision_features)")
        inputs_embeds, attention_mask = self.build_encoder_inputs(
            pixel_values, input_ids, attention_mask, vision_features
        )
        return super().generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)


__all__ = ["CLIPT5ForConditionalGeneration", "CLIPT5Projector"]
