"""Evaluation: `generation` (batched sampling behind one `Generator`: transformers, or vLLM when
installed) and `evaluate` (benchmark accuracy: pass@1, mean@N, unbiased pass@k, Wilson intervals,
breakdowns, the exact McNemar test of before and after)."""
