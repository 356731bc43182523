"""The DICOM node: receives radiographs from a PACS, drafts a report per complete study and sends it back as a
preliminary DICOM SR (the modules: docs/modules.md)."""
