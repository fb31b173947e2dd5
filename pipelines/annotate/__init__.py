"""VLM annotation of SA-V masklets into Ref-SAV-style referring expressions, by a list of
registered stages (stage.py: the contract; stages.py: the built-in ones; registry.py)."""
