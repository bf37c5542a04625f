"""Training: the stages of a run put together on TRL's `GRPOTrainer`.

`config` (`PRPOConfig`, every key checked) and `run_config` (the YAML run file); `rewards` (the outcome
reward R); `trainer` (`PRPOTrainer`: rollout -> entropy -> segments -> PRM -> advantages -> TRL's
loss); `trl_surface` (every use of TRL's private surface); `run` (what `prpo train` runs: held-out
accuracy before and after, training, the report); `metrics` (run files, collapse warning); `report`
(curves and the HTML report); `model_card` (the README of saved models).
"""
