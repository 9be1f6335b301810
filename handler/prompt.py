"""Turning a request into the model's prompt, with the operator's template from config."""

from __future__ import annotations

from handler.config import Settings


def compose(settings: Settings, prompt: str) -> str:
    """Fill the template; braces in the user's prompt are data, never placeholders."""
    return settings.prompt_template.format(system_prompt=settings.system_prompt, prompt=prompt)
