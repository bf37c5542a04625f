"""Prompt templates: how a problem becomes a chat (TRL's conversational format) or a plain string."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prpo.registry import Registry

Messages = list[dict[str, str]]

QWEN_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class Template:
    """A prompt template.

    `messages(problem)` is the chat (rendered by the model's chat template, e.g. by TRL);
    `text(problem)` is the plain-string rendering for models without a chat template.
    """

    name: str
    messages: Callable[[str], Messages]
    text: Callable[[str], str]

    @property
    def fn(self) -> Callable[[str], Messages]:
        """The template's function as a registry entry: `messages`."""
        return self.messages

    def render(self, problem: str, tokenizer=None) -> Messages | str:
        """Messages without a tokenizer; with one, a string: its chat template applied, else `text`."""
        if tokenizer is None:
            return self.messages(problem)
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(self.messages(problem), tokenize=False, add_generation_prompt=True)
        return self.text(problem)


TEMPLATES: Registry[Template] = Registry("prompt template")


def register_template(template: Template) -> Template:
    """Add a template to the registry under its name (a second one of that name is an error)."""
    TEMPLATES.add(template)
    return template


def get_template(name: str) -> Template:
    """The template ``name``; the error lists the known ones."""
    return TEMPLATES.lookup(name)


def chatml(messages: Messages) -> str:
    """ChatML (Qwen's format) with an open assistant turn."""
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def _qwen_boxed(problem: str) -> Messages:
    return [{"role": "system", "content": QWEN_MATH_SYSTEM}, {"role": "user", "content": problem}]


def _chat_user(problem: str) -> str:
    return f"{problem}\n\n{QWEN_MATH_SYSTEM}"


register_template(Template("qwen_boxed", _qwen_boxed, lambda problem: chatml(_qwen_boxed(problem))))
register_template(Template("chat", lambda problem: [{"role": "user", "content": _chat_user(problem)}], _chat_user))
