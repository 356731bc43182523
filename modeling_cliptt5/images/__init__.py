"""Reading images for drafting and training: PNG/JPEG (image_io.py), DICOM (dicom.py), bytes and limits
(image_source.py)."""
