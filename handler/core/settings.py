"""The settings' schema: every key of `config.yaml`, its type, bounds, default and description, and
what may be derived from them. Reading the file and the environment is `handler.core.config`'s job."""

from __future__ import annotations

import re
import string
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from handler.core.types import SamplingParams

ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SHA256 = re.compile(r"[0-9a-f]{64}")
TEMPLATE_FIELDS = frozenset({"system_prompt", "prompt"})


class Settings(BaseModel):
    """Everything the service reads from `config.yaml`; each field is one key of the file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # What loading decided that the operator should read in the log (the app logs it once at start).
    _notes: tuple[str, ...] = PrivateAttr(default=())

    # Model
    model_path: str = Field(
        "models/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="GGUF file to serve: a path (relative to the config file's folder) or s3://bucket/key.",
    )
    model_download_dir: str = Field(
        "/tmp/models", description="Where an s3:// model is downloaded, once per container (ephemeral disk)."
    )
    model_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="Known sha256 of the model file. When set it is the model's identity in cache keys, "
        "so a cold container never reads the file to fingerprint it.",
    )
    model_name: str | None = Field(
        None,
        min_length=1,
        description="The model's id in /v1/models, which OpenAI clients send as `model`; the model file's "
        "name without .gguf when unset.",
    )
    n_gpu_layers: int = Field(50, ge=-1, description="Layers offloaded to the GPU; ignored without one.")
    n_ctx: int = Field(2048, ge=64, le=131072, description="Context window in tokens.")
    n_batch: int = Field(512, ge=1, description="Prompt tokens evaluated per batch.")
    n_parallel: int = Field(
        8,
        ge=1,
        le=256,
        description="Most generations decoding together, in one llama.cpp batch (continuous batching). They "
        "share one KV cache of n_ctx tokens; a request that does not fit next to the running ones waits.",
    )
    flash_attn: bool = Field(
        True,
        description="llama.cpp's flash attention, on as in llama-server (a few percent faster decoding on a CPU, "
        "more on a GPU). Off matches llama-cpp-python's defaults bit for bit.",
    )
    reuse_prompt_prefix: bool = Field(
        True,
        description="Keep a finished generation's KV cache, so a request that starts with the same tokens "
        "(the system prompt and template) decodes only the rest, as llama-server's cache_prompt does.",
    )
    speculative_draft_max: int = Field(
        8,
        ge=0,
        le=64,
        description="Prompt-lookup speculative decoding: up to this many tokens per step that a sequence copies "
        "from where its last `speculative_ngram` tokens occurred earlier in its prompt or answer, verified "
        "in the same decode by the sequence's own sampler, so every token is the one it draws (llama-server's "
        "--spec-type ngram-simple); a sequence whose drafts keep failing pauses drafting. 0 turns it off.",
    )
    speculative_max_sequences: int = Field(
        2,
        ge=1,
        description="Drafts are made only while at most this many sequences decode: a wider batch keeps the "
        "cores busy already, and each draft adds a row of logits to compute (vLLM's disable_by_batch_size).",
    )
    speculative_ngram: int = Field(
        4, ge=1, le=32, description="Tokens a prompt-lookup draft matches before it proposes what followed them."
    )
    n_threads: int | None = Field(None, ge=1, description="CPU threads; all usable cores when unset.")
    use_mmap: bool = Field(
        True,
        description="Map the model file instead of reading it into memory: faster to load, but a file "
        "overwritten in place while loaded can crash the process; replace model files by rename, or set false.",
    )

    lora_adapters: dict[str, str] = Field(
        {},
        description="LoRA adapters for the model: a name to a GGUF adapter file (a path relative to the config "
        "file's folder, or s3://bucket/key, fetched as the model is). Each is served as the model id "
        "`<model>:<name>`, loaded the first time a request asks for it.",
    )
    lora_adapters_sha256: dict[str, str] = Field(
        {},
        description="Known sha256 of adapter files, by name: the adapter's identity in cache keys without "
        "reading it, and checked before it is loaded.",
    )

    # Embeddings (POST /v1/embeddings)
    embedding_pooling: Literal["model", "mean", "cls", "last"] = Field(
        "model",
        description="How token vectors become one vector per input: `model`: the pooling the model file declares "
        "(`<arch>.pooling_type`: mean, cls or last), mean where it declares none (llama.cpp would then give a "
        "vector per token, which the OpenAI shape has no place for).",
    )
    embedding_normalize: bool = Field(
        False,
        description="Scale each vector to unit length (L2), as OpenAI's and llama-server's are. Off: the pooled "
        "vector as it is, as llama-cpp-python's `Llama.embed` gives it.",
    )
    embedding_max_inputs: int = Field(
        128, ge=1, le=2048, description="Most inputs in one embeddings request; each is held to max_prompt_chars."
    )

    # Prompt
    system_prompt: str = Field(
        "Answer in rhymes!", description="/chat's system message (in prompt_template: what fills {system_prompt})."
    )
    prompt_format: Literal["auto", "prompt_template"] = Field(
        "auto",
        description="How /chat and chat messages become the model's prompt. auto: through the model's own chat "
        "template (its GGUF's tokenizer.chat_template) where it has one, else prompt_template; prompt_template: "
        "always prompt_template.",
    )
    prompt_template: str = Field(
        "System: {system_prompt}\n\nHuman: {prompt}\n\nAssistant:",
        description="The prompt for a model without a chat template of its own; must contain {prompt}.",
    )
    stop: list[str] = Field(
        ["Human:"], description="Where prompt_template is the format, generation stops before any of these strings."
    )

    # Generation defaults
    max_tokens_default: int = Field(100, ge=1, description="max_tokens when a request leaves it out.")
    max_tokens_limit: int = Field(1024, ge=1, description="Largest max_tokens a request may ask for.")
    max_choices: int = Field(
        8,
        ge=1,
        le=128,
        description="Largest `n` (choices sampled from one prompt) a /v1 completion request may ask for. Each "
        "sampled choice is a generation, counted against max_pending_generations (n above that is refused too); "
        "at temperature 0 one generation makes every choice.",
    )
    temperature: float = Field(
        0.0, ge=0.0, le=2.0, description="0 is greedy: deterministic, so a cached answer is the answer."
    )
    top_p: float = Field(
        0.95,
        gt=0.0,
        le=1.0,
        description="Top-p (nucleus) sampling above temperature 0: only the most likely tokens whose probabilities "
        "add up to top_p are drawn from; 1 keeps all. A /v1 request may send its own.",
    )
    top_k: int = Field(
        40,
        ge=0,
        description="Top-k sampling above temperature 0: only the k most likely tokens are drawn from; 0 keeps all. "
        "A /v1 request may send its own.",
    )
    min_p: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Min-p sampling above temperature 0: tokens less likely than min_p times the most likely one "
        "are dropped; 0 keeps all. A /v1 request may send its own.",
    )
    repeat_penalty: float = Field(
        1.0,
        gt=0.0,
        description="Penalty on tokens among the last 64, at every temperature (greedy too); 1.0 is none. "
        "A /v1 request may send its own.",
    )
    seed: int = Field(0, ge=0, description="Sampling seed, for temperature above 0.")

    # Response cache
    cache_memory_entries: int = Field(1024, ge=0, description="Answers kept in memory (LRU); 0 turns the tier off.")
    cache_dir: str | None = Field(
        "/tmp/llm-chat-cache",
        description="Disk cache folder (in a function only /tmp is writable); empty or null turns the tier off.",
    )
    cache_seed_dir: str | None = Field(
        None,
        description="A warmed cache folder shipped in the image (read-only there); copied into cache_dir "
        "when cache_dir has no cache yet, so a cold container starts with a warm disk tier.",
    )
    cache_disk_bytes: int = Field(256 * 1024 * 1024, ge=1024 * 1024, description="Disk cache size limit.")
    cache_ttl_seconds: float | None = Field(None, gt=0, description="Answers older than this are not served.")
    cache_disk_retry_seconds: float = Field(
        30.0, ge=0, description="After a disk fault, how long the service runs memory-only before retrying."
    )
    cache_table: str | None = Field(
        None,
        min_length=3,
        max_length=255,
        description="A DynamoDB table that every container shares, behind memory and disk; off when unset.",
    )
    cache_table_ttl_seconds: float = Field(
        7 * 24 * 3600,
        ge=60,
        description="How long the table keeps an answer (its TTL attribute); cache_ttl_seconds, when shorter, wins.",
    )
    cache_table_timeout_seconds: float = Field(0.5, gt=0, le=10, description="Connect and read timeout per call.")
    cache_table_max_attempts: int = Field(2, ge=1, le=10, description="Attempts per call, retries included.")
    cache_table_write_wait_seconds: float = Field(
        0.2, ge=0, le=5, description="Longest a response waits for its answer's write to the table."
    )
    cache_signing_keys: list[str] = Field(
        [],
        description="Secrets (at least 32 characters each) for the HMAC that every disk and table entry carries: "
        "the first signs, all verify (rotation: put the new key first, drop the old one once its entries have "
        "expired). An entry no key verifies is never served. Empty: entries are trusted as they are stored.",
    )
    cache_table_retry_seconds: float = Field(
        30.0, ge=0, description="After a table fault, how long the service leaves the table alone."
    )

    generation_timeout_seconds: float | None = Field(
        50.0,
        gt=0,
        description="A generation still running after this long stops, and its answer says so "
        "(finish_reason time_limit); in a function the invocation's remaining time, less 2 s, also bounds it.",
    )

    max_pending_generations: int = Field(
        16,
        ge=1,
        description="Distinct generations queued or running at once; a new one beyond gets a 429. "
        "Requests identical to one in flight join it and are never refused.",
    )

    # Input limits
    max_body_bytes: int = Field(65536, ge=1024, description="Largest request body; larger ones get a 413.")
    max_header_bytes: int = Field(
        32768, ge=1024, description="Largest request head (request line and headers) under uvicorn; larger: 431."
    )
    header_timeout_seconds: float = Field(
        10.0, gt=0, description="Under uvicorn, a connection that has not sent a whole request head by then is closed."
    )
    body_timeout_seconds: float = Field(
        30.0, gt=0, description="A request body not received whole within this time gets a 408."
    )
    max_prompt_chars: int = Field(16000, ge=1, description="Longest prompt, in characters; longer ones get a 400.")

    # Access
    api_keys: list[str] = Field(
        [], description="Keys accepted in `Authorization: Bearer <key>` or `X-API-Key`; none means open access."
    )
    api_keys_secret_id: str | None = Field(
        None,
        description="AWS Secrets Manager secret (name or ARN) holding more keys: a JSON list or one key per line. "
        "Read once per container, on the first request that needs it.",
    )

    # Service
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO",
        description="Lowest level of the JSON log lines written to stdout. The one line per request is INFO: "
        "WARNING or ERROR drops it, and with it the EMF metrics it carries in a function.",
    )
    metrics: Literal["auto", "emf", "prometheus", "off"] = Field(
        "auto", description="auto: CloudWatch EMF in the log line inside AWS Lambda, Prometheus /metrics elsewhere."
    )
    completion_parse_special: bool = Field(
        True,
        description="In raw /v1/completions prompts, read control-token text (such as <|im_start|>) as the "
        "control token, as llama-server and llama-cpp-python do: the caller writes the whole prompt. Off: "
        "everything is text. /chat and chat messages never parse it in what the user wrote.",
    )
    log_prompts: bool = Field(
        False, description="Put prompt and answer text in the request log line. Off: logs carry no user text."
    )

    @field_validator("prompt_template")
    @classmethod
    def _template_fields(cls, template: str) -> str:
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        except ValueError as exc:
            raise ValueError(f"not a valid template ({exc}); write a literal brace as {{{{ or }}}}") from None
        unknown = names - TEMPLATE_FIELDS
        if unknown:
            raise ValueError(f"unknown placeholder(s) {sorted(unknown)}; use {{system_prompt}} and {{prompt}}")
        if "prompt" not in names:
            raise ValueError("must contain {prompt}")
        return template

    def sampling_params(self, max_tokens: int) -> SamplingParams:
        """The configured sampling, for `max_tokens` tokens; the stop strings come with the prompt's format."""
        return SamplingParams(
            max_tokens=max_tokens,
            stop=(),
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repeat_penalty=self.repeat_penalty,
            seed=self.seed,
        )

    @property
    def notes(self) -> tuple[str, ...]:
        return self._notes

    @property
    def served_model(self) -> str:
        return self.model_name or self.model_path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".gguf")

    @field_validator("metrics", mode="before")
    @classmethod
    def _off_is_a_word(cls, value: object) -> object:
        """YAML reads an unquoted `metrics: off` as false."""
        return "off" if value is False else value

    @field_validator("model_path")
    @classmethod
    def _local_or_s3(cls, path: str) -> str:
        if "://" in path:
            bucket, _, key = path.removeprefix("s3://").partition("/")
            if not path.startswith("s3://") or not bucket or not key:
                raise ValueError("must be a local path or an s3://bucket/key URI")
        return path

    @field_validator("lora_adapters")
    @classmethod
    def _adapters(cls, adapters: dict[str, str]) -> dict[str, str]:
        for name, path in adapters.items():
            if not ADAPTER_NAME.fullmatch(name):
                raise ValueError(f"adapter name {name!r}: letters, digits, '.', '_' or '-', at most 64")
            cls._local_or_s3(path)
        return adapters

    @model_validator(mode="after")
    def _adapter_digests(self) -> Settings:
        for name, digest in self.lora_adapters_sha256.items():
            if name not in self.lora_adapters:
                raise ValueError(f"lora_adapters_sha256 names {name!r}, which is not in lora_adapters")
            if not SHA256.fullmatch(digest):
                raise ValueError(f"lora_adapters_sha256[{name!r}] must be 64 lowercase hex digits")
        return self

    def adapter_id(self, name: str) -> str:
        """The model id OpenAI clients send for an adapter."""
        return f"{self.served_model}:{name}"

    @field_validator("api_keys")
    @classmethod
    def _keys_long_enough(cls, keys: list[str]) -> list[str]:
        if any(len(key) < 16 for key in keys):
            raise ValueError("each API key must be at least 16 characters")
        return keys

    @field_validator("cache_signing_keys")
    @classmethod
    def _signing_keys_long_enough(cls, keys: list[str]) -> list[str]:
        if any(len(key) < 32 for key in keys):
            raise ValueError("each cache signing key must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        return keys

    @field_validator("stop")
    @classmethod
    def _non_empty_stops(cls, stop: list[str]) -> list[str]:
        if any(not s for s in stop):
            raise ValueError("stop strings must not be empty")
        return stop
