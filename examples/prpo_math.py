"""PRPO on math: `grpo_math.py` with the imports and class names changed and a PRM named.

    python examples/prpo_math.py

`reward_range=[0, 1]` maps accuracy_reward's 0/1 onto the paper's -1/+1 (the outcome location
beta is in the reward's units, the PRM's process advantage is not).
"""

from datasets import load_dataset
from prpo import PRPOConfig, PRPOTrainer
from trl.rewards import accuracy_reward

PRM = {"type": "step_tag", "model": "Qwen/Qwen2.5-Math-PRM-7B"}


def build(model, dataset, prm=PRM, **config):
    return PRPOTrainer(
        model=model,
        reward_funcs=accuracy_reward,
        args=PRPOConfig(output_dir="prpo-math", reward_range=[0, 1], **config),
        train_dataset=dataset,
        prm=prm,
    )


if __name__ == "__main__":
    build(
        "Qwen/Qwen2.5-0.5B-Instruct",
        load_dataset("trl-lib/DeepMath-103K", split="train"),
    ).train()
