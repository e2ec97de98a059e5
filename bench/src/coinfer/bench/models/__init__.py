"""Model recipes used only for measuring and demonstrating: the digits CNN, MiniLM and the
zero-shot topic classifier built on it, SmolLM2, and the PP-OCRv4 detector cut in two."""
