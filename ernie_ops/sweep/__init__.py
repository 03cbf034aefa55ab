"""`ernie-ops sweep`: serve several variants of a checkpoint one after another (quantization,
engine, batch sizes: any serve-profile field), smoke-test, evaluate and load each, record memory,
and write the trade-off report with a recommendation."""
