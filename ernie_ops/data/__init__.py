"""Training data: read (JSONL / JSON arrays / .gz), recognise formats, lint, convert to ERNIEKit's
formats, preview what the model learns from, and split train/eval."""
