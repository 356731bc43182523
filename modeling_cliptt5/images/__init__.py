"""Reading images (PNG, JPEG, DICOM) for training, drafting and the page (the modules: docs/modules.md)."""
