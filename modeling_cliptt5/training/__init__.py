"""Training: the settings (config.py), the one loop both stages run (loop.py), stage 1 (contrastive.py) and stage 2
(generation.py), the model parts and rates (model.py), data loading (data.py), states (state.py), the frozen-tower
feature cache (feature_cache.py) and the report tokenizer (tokenizer.py)."""
