"""Every error the service answers with: a status and a message safe to show the caller.

The cause of a fault inside (paths, exception text) is kept apart, for the log only;
`handler.middleware.error_responses` turns these into responses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar


class ServiceError(Exception):
    """An error with a status and a message that is safe to show the caller."""

    status_code = 500
    error_type = "internal_error"
    public_message = "The service failed to answer; the request id identifies the cause in the log."
    headers: ClassVar[Mapping[str, str] | None] = None
    param: str | None = None  # the request field at fault, as OpenAI's error bodies name it
    code: str | None = None  # OpenAI's error code, where OpenAI has one for this error
    # The field at fault is the route's prompt (`messages`, `prompt`): the error handler names it on /v1.
    about_prompt: ClassVar[bool] = False

    def __init__(self, cause: str = "") -> None:
        super().__init__(cause)
        self.cause = cause  # for the log only

    def openai_message(self, param: str | None) -> str:
        """The message on the OpenAI-compatible routes, where `param` is the field at fault."""
        return self.public_message


class ModelUnavailable(ServiceError):
    """The model cannot be loaded now; a later request tries again."""

    status_code = 503
    error_type = "model_unavailable"
    public_message = "The model could not be loaded. It is retried on the next request; try again shortly."


class ModelMismatch(ModelUnavailable):
    """The model file is not the one the configuration declares: retrying will not help, fixing it will."""

    error_type = "model_mismatch"
    public_message = (
        "The model file does not match this service's configured model_sha256; the operator has to fix the "
        "file or the setting (model_sha256 or CHAT_MODEL_SHA256; the log names both digests)."
    )


class ServiceUnavailable(ServiceError):
    """Something the service needs (a secret, a store) cannot be reached now; a later request tries again."""

    status_code = 503
    error_type = "service_unavailable"
    public_message = "The service cannot reach something it needs right now; try again shortly."


class GenerationFailed(ServiceError):
    status_code = 500
    error_type = "generation_failed"
    public_message = "The model failed while generating the answer; the request id identifies it in the log."


class ContextOverflow(ServiceError):
    """Prompt plus requested tokens do not fit the context window: the caller's to fix."""

    status_code = 400
    error_type = "context_length_exceeded"
    code = "context_length_exceeded"
    about_prompt = True

    def __init__(self, prompt_tokens: int, max_tokens: int, n_ctx: int) -> None:
        super().__init__(f"prompt {prompt_tokens} + max_tokens {max_tokens} > n_ctx {n_ctx}")
        self.prompt_tokens, self.max_tokens, self.n_ctx = prompt_tokens, max_tokens, n_ctx
        self.public_message = (
            f"The prompt is {prompt_tokens} tokens and max_tokens is {max_tokens}: together "
            f"{prompt_tokens + max_tokens}, more than the model's context of {n_ctx} tokens. "
            "Shorten the prompt or lower max_tokens."
        )

    def openai_message(self, param: str | None) -> str:
        """OpenAI's own wording, which clients recognise (litellm's ContextWindowExceededError keys on its
        first words); `param` names the prompt's field, `messages` or `prompt`."""
        what = param or "messages"
        return (
            f"This model's maximum context length is {self.n_ctx} tokens. However, you requested "
            f"{self.prompt_tokens + self.max_tokens} tokens ({self.prompt_tokens} in the {what}, "
            f"{self.max_tokens} in the completion). Please reduce the length of the {what} or completion."
        )


class InputTooLong(ServiceError):
    """An embedding input longer than the embedding context: the caller's to fix."""

    status_code = 400
    error_type = "context_length_exceeded"
    code = "context_length_exceeded"
    param = "input"

    def __init__(self, index: int, tokens: int, limit: int) -> None:
        super().__init__(f"input {index}: {tokens} tokens > embedding context {limit}")
        self.public_message = (
            f"This model's maximum context length is {limit} tokens for one embedding input. Input {index} is "
            f"{tokens} tokens, more than the {limit} tokens this service embeds at once. Shorten it."
        )


class BadRequest(ServiceError):
    status_code = 400
    error_type = "invalid_request"

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.public_message = message
        self.param = param
        self.code = code


class PromptTooLong(BadRequest):
    """A prompt over `max_prompt_chars`; on /v1 its param is the route's prompt field."""

    about_prompt = True

    def __init__(self, chars: int, limit: int) -> None:
        super().__init__(f"The prompt is {chars} characters, above this service's limit of {limit}. Shorten it.")


class NotFound(BadRequest):
    status_code = 404
    error_type = "not_found"


class Busy(ServiceError):
    """Too many distinct generations are already waiting: the caller should come back later."""

    status_code = 429
    error_type = "busy"
    public_message = "The service is busy with other requests; retry in a few seconds."
    code = "rate_limit_exceeded"
    headers: ClassVar[Mapping[str, str] | None] = {"Retry-After": "2"}

    def __init__(self, pending: int) -> None:
        super().__init__(f"{pending} generations pending")
