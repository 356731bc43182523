"""cliptt5: draft chest X-ray reports from images with a BiomedCLIP image tower and a T5 encoder-decoder.

The package imports lazily, as transformers does: `import modeling_cliptt5` (and so every `cliptt5-*` command's
`--help`) loads neither torch nor transformers; the first use of a public name below imports its module and
registers CLIP-T5 with transformers' Auto classes (`register_auto_classes`).
"""

import importlib

_PUBLIC = {
    "CLIPT5Config": "configuration_cliptt5",
    "CLIPT5ForConditionalGeneration": "modeling_cliptt5",
    "CLIPT5ImageProcessor": "processing_cliptt5",
    "CLIPT5Processor": "processing_cliptt5",
    "format_report": "processing_cliptt5",
    "split_report_sections": "processing_cliptt5",
}
_registered = False


def register_auto_classes():
    """With this called, the Auto classes resolve CLIP-T5 to this package's classes without trust_remote_code.

    Saved releases carry their own code either way: each class names its auto class (`_auto_class`), so
    save_pretrained copies the three files and writes the config's auto_map (see CLIPT5Config)."""
    global _registered
    if _registered:
        return
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForSeq2SeqLM, AutoProcessor

    from modeling_cliptt5.configuration_cliptt5 import CLIPT5Config
    from modeling_cliptt5.modeling_cliptt5 import CLIPT5ForConditionalGeneration
    from modeling_cliptt5.processing_cliptt5 import TRANSFORMERS_MAJOR, CLIPT5ImageProcessor, CLIPT5Processor

    AutoConfig.register(CLIPT5Config.model_type, CLIPT5Config, exist_ok=True)
    AutoModel.register(CLIPT5Config, CLIPT5ForConditionalGeneration, exist_ok=True)
    AutoModelForSeq2SeqLM.register(CLIPT5Config, CLIPT5ForConditionalGeneration, exist_ok=True)
    if TRANSFORMERS_MAJOR >= 5:
        # One implementation, the PIL one (it reproduces open_clip's transform exactly), for either backend: with
        # only {"pil": ...} registered, AutoImageProcessor asks for "torchvision" wherever torchvision is installed
        # and prints "Requested torchvision backend is not available. Falling back to pil backend." at every load.
        AutoImageProcessor.register(CLIPT5Config, image_processor_classes={"pil": CLIPT5ImageProcessor,
                                                                           "torchvision": CLIPT5ImageProcessor},
                                    exist_ok=True)
    else:  # 4.x: the positional argument is deprecated (a FutureWarning at import)
        AutoImageProcessor.register(CLIPT5Config, slow_image_processor_class=CLIPT5ImageProcessor, exist_ok=True)
    AutoProcessor.register(CLIPT5Config, CLIPT5Processor, exist_ok=True)
    _registered = True


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    register_auto_classes()
    value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    globals()[name] = value
    return value


__all__ = [*_PUBLIC, "register_auto_classes"]
