"""Readers that turn a public chest X-ray set (Kaggle curated CXR, R2Gen, OpenI, an image folder) into the report
schema; their command lines are modeling_cliptt5/cli/convert_*.py."""
