"""Controlled benchmark: does PRPO beat GRPO, and does process-only training collapse?

A small decoder-only policy is trained from scratch on multi-step arithmetic (`policy`), warm-started
on solutions with realistic step errors (`warmstart`), then trained with RL by `PRPOTrainer` once per
method and seed with everything but the advantage held fixed (`runner`); `summary` turns the raw
per-step records into a table with intervals and plots.
"""
