"""GRPO on math with TRL, as in TRL's quickstart: the script `prpo_math.py` starts from.

    python examples/grpo_math.py
"""

from datasets import load_dataset
from trl import GRPOConfig, GRPOTrainer
from trl.rewards import accuracy_reward


def build(model, dataset, **config):
    return GRPOTrainer(
        model=model,
        reward_funcs=accuracy_reward,
        args=GRPOConfig(output_dir="grpo-math", **config),
        train_dataset=dataset,
    )


if __name__ == "__main__":
    build(
        "Qwen/Qwen2.5-0.5B-Instruct",
        load_dataset("trl-lib/DeepMath-103K", split="train"),
    ).train()
