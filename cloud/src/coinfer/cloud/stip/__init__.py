"""The STIP model developer's tooling (publish) and the model server (serve)."""
