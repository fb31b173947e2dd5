"""Three-stage VLM annotation of SA-V masklets into Ref-SAV-style referring expressions."""
