"""Turning a request into the model's input with the operator's template from config."""

from __future__ import annotations

from handler.core.errors import BadRequest
from handler.core.settings import Settings
from handler.core.types import ChatMessage, ChatPrompt, ModelInput, Prompt, ToolSpec

ROLE_LABELS = {"user": "Human", "assistant": "Assistant", "tool": "Tool"}


def compose(settings: Settings, prompt: str) -> str:
    """Fill the template; braces in the user's prompt are data, never placeholders."""
    return settings.prompt_template.format(system_prompt=settings.system_prompt, prompt=prompt)


def template_input(settings: Settings, prompt: str) -> ModelInput:
    """`prompt_template` around the user's text, all of it text to the model, with its stop strings."""
    return ModelInput.text(compose(settings, prompt), stop=tuple(settings.stop))


def chat_input(settings: Settings, prompt: str) -> Prompt:
    """/chat's model input: `system_prompt` and the user's text as a system and a user message, so that a
    model with a chat template of its own gets them through it, as /v1/chat/completions would send them;
    for a model without one, or under `prompt_format: prompt_template`, exactly `compose`'s text."""
    system = [ChatMessage("system", settings.system_prompt)] if settings.system_prompt else []
    return chat_prompt(settings, [*system, ChatMessage("user", prompt)])


def completion_input(settings: Settings, prompt: str) -> ModelInput:
    """A raw completion prompt, sent as it is; its control-token text is parsed as llama-server and
    llama-cpp-python parse it, unless `completion_parse_special` is off."""
    return ModelInput.text(prompt, special=settings.completion_parse_special)


def chat_prompt(settings: Settings, messages: list[ChatMessage], tools: tuple[ToolSpec, ...] = ()) -> Prompt:
    """Chat messages, with the prompt for a model that has no chat template of its own (which one
    applies is known from the model file's header); under `prompt_format: prompt_template`, that prompt
    alone. It writes earlier turns as `Human:`/`Assistant:` lines inside the template's {prompt}, so that
    one user message gives exactly `compose`'s text. All of it is text to the model: what users write
    never becomes a control token. `tools`: for the model's template to list (`handler.service.tool_calls`)."""
    if not messages or messages[-1].role not in ("user", "tool"):
        raise BadRequest("messages must end with a message whose role is user (or tool, a tool's result).")
    systems = [m.content for m in messages if m.role == "system"]
    turns = [m for m in messages if m.role != "system"]
    lines = [f"{ROLE_LABELS[m.role]}: {m.content}" for m in turns]
    conversation = "\n\n".join(lines).removeprefix(f"{ROLE_LABELS['user']}: ")  # the template writes it
    fallback = settings.prompt_template.format(
        system_prompt="\n\n".join(systems) if systems else settings.system_prompt, prompt=conversation
    )
    text_format = ModelInput.text(fallback, stop=tuple(settings.stop))  # one user message: template_input's
    if settings.prompt_format == "prompt_template":
        return text_format
    return ChatPrompt(tuple(messages), text_format, tools)
