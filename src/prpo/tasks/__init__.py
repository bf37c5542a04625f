"""Tasks: prompts + gold answers + a grader + a prompt template, loaded by name.

    task = load_task("math500", data_file="data/math500.jsonl")  # a local copy of the file
    dataset = task.to_dataset()          # columns prompt, problem, answer, prompt_id (for TRL)
    task.grader(response, task.examples[0].answer)

Registered tasks: math, math500, gsm8k, aime24, amc23 (benchmarks.py) and arithmetic
(generated, arithmetic.py). Add one with `@register_task(name, template=..., grader=...)`;
add a prompt template with `register_template(Template(...))`.
"""

from prpo.tasks import arithmetic, benchmarks  # noqa: F401  (registers the built-in tasks)
from prpo.tasks.base import TASKS, Example, Task, TaskSpec, load_task, register_task
from prpo.tasks.templates import TEMPLATES, Template, get_template, register_template

__all__ = [
    "TASKS",
    "TEMPLATES",
    "Example",
    "Task",
    "TaskSpec",
    "Template",
    "get_template",
    "load_task",
    "register_task",
    "register_template",
]
