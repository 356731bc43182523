"""Datasets: the one report schema (schema.py), the built-in synthetic phantoms (phantom.py), report text cleaning
(reports.py), the dataset sources training reads (sources.py) and the converters of public sets (converters/)."""
