"""The model file: where it comes from (source), what it is (identity, digest), what its header says."""
