"""cliptt5: draft chest X-ray reports from images with a BiomedCLIP image tower and a T5 encoder-decoder."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForSeq2SeqLM, AutoProcessor

from modeling_cliptt5.configuration_cliptt5 import CLIPT5Config
from modeling_cliptt5.modeling_cliptt5 import CLIPT5ForConditionalGeneration
from modeling_cliptt5.processing_cliptt5 import TRANSFORMERS_MAJOR, CLIPT5ImageProcessor, CLIPT5Processor
from modeling_cliptt5.processing_cliptt5 import format_report, split_report_sections

# Saved releases carry their own code (trust_remote_code): register the classes so that save_pretrained
# copies the files and writes auto_map entries. AutoModel and AutoModelForImageTextToText are added to the
# config's auto_map by hand, since a class registers for only one auto class (see CLIPT5Config).
CLIPT5Config.register_for_auto_class()
CLIPT5ForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
CLIPT5ImageProcessor.register_for_auto_class("AutoImageProcessor")
CLIPT5Processor.register_for_auto_class("AutoProcessor")

# With the package imported, the Auto classes also resolve CLIP-T5 without trust_remote_code.
AutoConfig.register(CLIPT5Config.model_type, CLIPT5Config, exist_ok=True)
AutoModel.register(CLIPT5Config, CLIPT5ForConditionalGeneration, exist_ok=True)
AutoModelForSeq2SeqLM.register(CLIPT5Config, CLIPT5ForConditionalGeneration, exist_ok=True)
if TRANSFORMERS_MAJOR >= 5:
    # One implementation, the PIL one (it reproduces open_clip's transform exactly), for either backend: with only
    # {"pil": ...} registered, AutoImageProcessor asks for "torchvision" wherever torchvision is installed and prints
    # "Requested torchvision backend is not available. Falling back to pil backend." at every load.
    AutoImageProcessor.register(CLIPT5Config, image_processor_classes={"pil": CLIPT5ImageProcessor,
                                                                       "torchvision": CLIPT5ImageProcessor},
                                exist_ok=True)
else:  # 4.x: the positional argument is deprecated (a FutureWarning at import)
    AutoImageProcessor.register(CLIPT5Config, slow_image_processor_class=CLIPT5ImageProcessor, exist_ok=True)
AutoProcessor.register(CLIPT5Config, CLIPT5Processor, exist_ok=True)

__all__ = [
    "CLIPT5Config",
    "CLIPT5ForConditionalGeneration",
    "CLIPT5ImageProcessor",
    "CLIPT5Processor",
    "format_report",
    "split_report_sections",
]
