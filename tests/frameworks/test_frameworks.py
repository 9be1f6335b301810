"""The agent frameworks' default paths, unchanged, against a real `python -m handler` serving the embedded default
model (SmolLM2-135M-Instruct Q4_1): each test runs a short snippet in the frameworks' own venv (see the Makefile's
`$(FRAMEWORKS)`: two venvs, since the newest releases disagree on the openai SDK) as a process of its own, and
asserts on the JSON it prints. A 135M model answers poorly: these assert the shapes (a call was made with arguments
that validate, a pydantic model came back valid), not the wisdom. The README's "With your framework" table is
what they measure."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from handler.cli.assemble_model import MODELS, MODELS_DIR, assemble
from tests.helpers.server import ROOT, ServiceProcess, crash_message

pytestmark = pytest.mark.frameworks

SNIPPET_TIMEOUT_S = 120
# What every snippet starts with: the server's root and /v1 URLs, the model id and WEATHER_PROMPT, from its arguments.
PRELUDE = "import json, sys\nROOT_URL, MODEL, PROMPT = sys.argv[1:4]\nURL = ROOT_URL + '/v1'\n"
# The prompt of the snippets that want a tool call: SmolLM2 135M, asked about the weather, often just answers.
WEATHER_PROMPT = "Use the get_weather tool to find the weather in Paris."
# Nothing a framework does by default may leave this machine: litellm fetches its model cost map, the Agents SDK
# exports traces to OpenAI, unless told not to. A developer's own keys and endpoints stay out.
OFFLINE = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "OPENAI_AGENTS_DISABLE_TRACING": "1", "HF_HUB_OFFLINE": "1"}
LEFT_OUT = ("OPENAI_", "ANTHROPIC_", "LITELLM_", "LANGCHAIN_", "LANGSMITH_", "LLAMA_INDEX_")


@dataclass
class Server:
    url: str
    model: str
    process: ServiceProcess


def framework_python(venv: str) -> Path:
    """The interpreter of one frameworks venv (`openai3`, `openai2`): `make test` builds them and says where."""
    folder = Path(os.environ.get("FRAMEWORKS_DIR", str(ROOT / ".venv-frameworks")))
    python = folder / venv / "bin" / "python"
    assert python.exists(), (
        f"{python} is missing: run `make test`, which builds it from tests/frameworks/requirements-{venv}.txt"
    )
    return python


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `python -m handler` on SmolLM2 for the module, its response cache off (each snippet reaches the
    model), greedy as config.yaml has it."""
    model = MODELS["smollm2"]
    path = assemble(model, MODELS_DIR / model.file_name)
    env = {
        "CHAT_MODEL_PATH": str(path),
        "CHAT_MODEL_SHA256": model.sha256,
        "CHAT_CACHE_DIR": "",
        "CHAT_CACHE_MEMORY_ENTRIES": "0",
        "CHAT_LOG_LEVEL": "WARNING",
        "CHAT_METRICS": "off",
    }
    service = ServiceProcess(env, log=tmp_path_factory.mktemp("server") / "server.log")
    try:
        service.wait_ready(60)
        (served,) = httpx.get(f"{service.url}/v1/models", timeout=10).json()["data"]
        yield Server(service.url, served["id"], service)
        assert service.process.poll() is None, crash_message(service.process.returncode)
    finally:
        service.stop()


def run(server: Server, venv: str, tmp_path: Path, *parts: str) -> dict[str, Any]:
    """Runs PRELUDE and `parts` (each dedented) in that venv's python, isolated (-I: no PYTHONPATH, no current
    folder on the path), and returns the JSON object its last line of output is."""
    code = PRELUDE + "".join(textwrap.dedent(part) for part in parts)
    env = {k: v for k, v in os.environ.items() if not k.startswith((*LEFT_OUT, "PYTHON"))}
    done = subprocess.run(
        [str(framework_python(venv)), "-I", "-c", code, server.url, server.model, WEATHER_PROMPT],
        capture_output=True,
        text=True,
        env={**env, **OFFLINE},
        cwd=tmp_path,
        timeout=SNIPPET_TIMEOUT_S,
    )
    assert done.returncode == 0, (
        f"the snippet failed:\n{done.stderr[-4000:]}\nthe server's log:\n{server.process.output()}"
    )
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


CITY = """
from pydantic import BaseModel

class City(BaseModel):
    name: str
    country: str
"""


def test_pydantic_ai_output_type_a_pydantic_model(server: Server, tmp_path: Path) -> None:
    """pydantic-ai's default structured output: the model as a tool (`final_result`) the model must call."""
    code = """
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    model = OpenAIChatModel(MODEL, provider=OpenAIProvider(base_url=URL, api_key="unused"))
    agent = Agent(model, output_type=City, model_settings={"temperature": 0, "max_tokens": 64})
    result = agent.run_sync("Which city is the capital of France?")
    calls = [p.tool_name for m in result.all_messages() for p in m.parts if p.part_kind == "tool-call"]
    print(json.dumps({"type": type(result.output).__name__, "output": result.output.model_dump(), "calls": calls}))
    """
    out = run(server, "openai3", tmp_path, CITY, code)
    assert out["type"] == "City"
    assert all(isinstance(out["output"][k], str) for k in ("name", "country"))
    assert out["calls"] == ["final_result"]


def test_pydantic_ai_agent_calls_its_tool_and_then_answers(server: Server, tmp_path: Path) -> None:
    """An agent with one tool: the model calls it with arguments that validate, gets its result back and answers.
    The tool is offered once (its `prepare` hides it after the call): SmolLM2 135M, shown the tool again, calls
    it again until the agent's request limit."""
    code = """
    from pydantic_ai import Agent, RunContext, Tool, UsageLimits
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    calls = []

    def get_weather(city: str) -> str:
        \"\"\"Get the current weather in a city.\"\"\"
        calls.append(city)
        return f"It is sunny and 21 C in {city}."

    async def once(ctx: RunContext, tool_def):
        return None if calls else tool_def

    model = OpenAIChatModel(MODEL, provider=OpenAIProvider(base_url=URL, api_key="unused"))
    agent = Agent(model, tools=[Tool(get_weather, prepare=once)], model_settings={"temperature": 0, "max_tokens": 64})
    result = agent.run_sync(PROMPT, usage_limits=UsageLimits(request_limit=4))
    parts = [p.part_kind for m in result.all_messages() for p in m.parts]
    print(json.dumps({"calls": calls, "output": result.output, "parts": parts}))
    """
    out = run(server, "openai3", tmp_path, code)
    assert out["calls"] == ["Paris"]
    assert out["parts"] == ["user-prompt", "tool-call", "tool-return", "text"]
    assert isinstance(out["output"], str) and out["output"].strip()


def test_instructor_tools_mode_returns_a_validated_model(server: Server, tmp_path: Path) -> None:
    """instructor's default, `Mode.TOOLS`: the response model as the one tool, named in `tool_choice`."""
    code = """
    import instructor
    from openai import OpenAI

    client = instructor.from_openai(OpenAI(base_url=URL, api_key="unused", max_retries=0), mode=instructor.Mode.TOOLS)
    city = client.chat.completions.create(
        model=MODEL, response_model=City, max_retries=0, max_tokens=64, temperature=0,
        messages=[{"role": "user", "content": "Which city is the capital of France?"}],
    )
    print(json.dumps({"type": type(city).__name__, "value": city.model_dump()}))
    """
    out = run(server, "openai2", tmp_path, CITY, code)
    assert out["type"] == "City"
    assert all(isinstance(out["value"][k], str) for k in ("name", "country"))


LANGCHAIN = """
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

@tool
def get_weather(city: str) -> str:
    \"\"\"Get the current weather in a city.\"\"\"
    return "sunny"

llm = ChatOpenAI(model=MODEL, base_url=URL, api_key="unused", temperature=0, max_tokens=64, max_retries=0)
"""


def test_langchain_bind_tools_makes_a_tool_call_invoked_and_streamed(server: Server, tmp_path: Path) -> None:
    code = """
    called = llm.bind_tools([get_weather]).invoke(PROMPT)
    streamed, chunks = None, 0
    for chunk in llm.bind_tools([get_weather]).stream(PROMPT):
        streamed, chunks = (chunk if streamed is None else streamed + chunk), chunks + 1
    print(json.dumps({"invoked": called.tool_calls, "streamed": streamed.tool_calls, "chunks": chunks}))
    """
    out = run(server, "openai3", tmp_path, LANGCHAIN, code)
    (call,) = out["invoked"]
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
    assert call["id"].startswith("call_")
    assert [(c["name"], c["args"]) for c in out["streamed"]] == [(call["name"], call["args"])]
    assert out["chunks"] > 1


def test_langchain_with_structured_output(server: Server, tmp_path: Path) -> None:
    """`method="function_calling"` (a forced tool call) and langchain-openai's default, `json_schema`
    (`response_format`)."""
    code = """
    question = "Which city is the capital of France?"
    by_tool = llm.with_structured_output(City, method="function_calling").invoke(question)
    by_schema = llm.with_structured_output(City).invoke(question)
    print(json.dumps({"function_calling": [type(by_tool).__name__, by_tool.model_dump()],
                      "json_schema": [type(by_schema).__name__, by_schema.model_dump()]}))
    """
    out = run(server, "openai3", tmp_path, LANGCHAIN, CITY, code)
    for method in ("function_calling", "json_schema"):
        kind, value = out[method]
        assert kind == "City", method
        assert all(isinstance(value[k], str) for k in ("name", "country")), method


def test_llama_index_openai_like_structured_predict_and_structured_llm(server: Server, tmp_path: Path) -> None:
    """With `is_chat_model=True, is_function_calling_model=True`, llama-index's structured output is a forced
    tool call (OpenAILike's defaults, both False, fail in the client: the next test)."""
    code = """
    from llama_index.core.llms import ChatMessage
    from llama_index.core.prompts import PromptTemplate
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(model=MODEL, api_base=URL, api_key="unused", is_chat_model=True, is_function_calling_model=True,
                     temperature=0, max_tokens=64, max_retries=0)
    predicted = llm.structured_predict(City, PromptTemplate("Which city is the capital of {country}?"), country="France")
    answer = llm.as_structured_llm(City).chat([ChatMessage(role="user", content="Which city is the capital of Italy?")])
    print(json.dumps({"structured_predict": [type(predicted).__name__, predicted.model_dump()],
                      "as_structured_llm": [type(answer.raw).__name__, answer.raw.model_dump()]}))
    """
    out = run(server, "openai2", tmp_path, CITY, code)
    for path in ("structured_predict", "as_structured_llm"):
        kind, value = out[path]
        assert kind == "City", path
        assert all(isinstance(value[k], str) for k in ("name", "country")), path


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="llama-index-llms-openai-like 0.8.1 with its defaults (is_chat_model=False, is_function_calling_model="
    "False): structured_predict raises TypeError: Completions.create() got an unexpected keyword argument "
    "'tool_choice' inside llama-index, before any request reaches the server",
)
def test_llama_index_openai_like_structured_predict_with_its_defaults(server: Server, tmp_path: Path) -> None:
    code = """
    from llama_index.core.prompts import PromptTemplate
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(model=MODEL, api_base=URL, api_key="unused", temperature=0, max_tokens=64, max_retries=0)
    try:
        predicted = llm.structured_predict(City, PromptTemplate("Which city is the capital of {country}?"), country="France")
        print(json.dumps({"type": type(predicted).__name__}))
    except Exception as error:
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
    """
    out = run(server, "openai2", tmp_path, CITY, code)
    assert out.get("error") is None, out["error"]
    assert out["type"] == "City"


def test_litellm_completion_plain_and_with_tools(server: Server, tmp_path: Path) -> None:
    code = """
    import litellm

    common = dict(model="openai/" + MODEL, api_base=URL, api_key="unused", temperature=0, max_tokens=32)
    plain = litellm.completion(messages=[{"role": "user", "content": "Say hello in Spanish."}], **common)
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    called = litellm.completion(messages=[{"role": "user", "content": PROMPT}], tools=tools, **common)
    calls = [[c.function.name, json.loads(c.function.arguments)] for c in called.choices[0].message.tool_calls or []]
    print(json.dumps({"text": plain.choices[0].message.content, "finish": plain.choices[0].finish_reason,
                      "calls": calls, "calls_finish": called.choices[0].finish_reason}))
    """
    out = run(server, "openai3", tmp_path, code)
    assert out["text"].strip() and out["finish"] in {"stop", "length"}
    ((name, arguments),) = out["calls"]
    assert name == "get_weather" and isinstance(arguments["city"], str)
    assert out["calls_finish"] == "tool_calls"


def test_anthropic_sdk_messages_create_with_a_tool(server: Server, tmp_path: Path) -> None:
    """A `tool_use` block, then its `tool_result` sent back. (The SDK's `messages.create` takes no `temperature`
    any more: the service's config samples greedily.)"""
    code = """
    import anthropic

    client = anthropic.Anthropic(base_url=ROOT_URL, api_key="unused", max_retries=0)
    tools = [{"name": "get_weather", "description": "Get the current weather in a city",
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    ask = [{"role": "user", "content": PROMPT}]
    message = client.messages.create(model=MODEL, max_tokens=64, tools=tools, messages=ask)
    uses = [block for block in message.content if block.type == "tool_use"]
    result = [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21 C"} for use in uses]
    reply = client.messages.create(model=MODEL, max_tokens=32, tools=tools, tool_choice={"type": "none"},
                                   messages=[*ask, {"role": "assistant", "content": message.content}, {"role": "user", "content": result}])
    print(json.dumps({"stop_reason": message.stop_reason, "uses": [[u.name, u.input] for u in uses],
                      "reply": [reply.stop_reason, [b.type for b in reply.content]]}))
    """
    out = run(server, "openai3", tmp_path, code)
    assert out["stop_reason"] == "tool_use"
    ((name, arguments),) = out["uses"]
    assert name == "get_weather" and isinstance(arguments["city"], str)
    assert out["reply"][0] in {"end_turn", "max_tokens"} and out["reply"][1] == ["text"]


def test_openai_agents_sdk_runs_an_agent_with_a_function_tool_over_responses(server: Server, tmp_path: Path) -> None:
    """The Agents SDK's default model, `OpenAIResponsesModel` (`/v1/responses`), through a client with our
    base_url; run and streamed. The tool is enabled until called: SmolLM2 135M, shown it again, calls it again."""
    code = """
    import asyncio
    from openai import AsyncOpenAI
    from agents import Agent, ModelSettings, Runner, function_tool, set_default_openai_api, set_default_openai_client

    set_default_openai_client(AsyncOpenAI(base_url=URL, api_key="unused", max_retries=0), use_for_tracing=False)
    set_default_openai_api("responses")
    calls = []

    @function_tool(is_enabled=lambda ctx, agent: not calls)
    def get_weather(city: str) -> str:
        \"\"\"Get the current weather in a city.\"\"\"
        calls.append(city)
        return f"It is sunny and 21 C in {city}."

    agent = Agent(name="weather", instructions="You answer questions about the weather.", tools=[get_weather],
                  model=MODEL, model_settings=ModelSettings(temperature=0, max_tokens=64))

    async def main():  # one event loop for both runs: the client's connections belong to it
        ran = await Runner.run(agent, PROMPT, max_turns=4)
        ran_calls = list(calls)
        calls.clear()
        run = Runner.run_streamed(agent, PROMPT, max_turns=4)
        events = [event.type async for event in run.stream_events()]
        return ran, ran_calls, run, events

    ran, ran_calls, run, events = asyncio.run(main())
    print(json.dumps({"calls": ran_calls, "items": [item.type for item in ran.new_items], "output": ran.final_output,
                      "streamed_calls": calls, "streamed_items": [item.type for item in run.new_items],
                      "raw_events": events.count("raw_response_event")}))
    """
    out = run(server, "openai3", tmp_path, code)
    assert out["calls"] == ["Paris"] and out["streamed_calls"] == ["Paris"]
    items = ["tool_call_item", "tool_call_output_item", "message_output_item"]
    assert out["items"] == items and out["streamed_items"] == items
    assert isinstance(out["output"], str) and out["output"].strip()
    assert out["raw_events"] > 2


def test_openai_client_tool_call_and_responses_as_the_readme_shows(server: Server, tmp_path: Path) -> None:
    """The README's two examples with the openai client: a forced tool call on chat, and responses.create."""
    code = """
    from openai import OpenAI

    client = OpenAI(base_url=URL, api_key="unused", max_retries=0)
    city = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "A city's weather", "parameters": city}}]
    question = [{"role": "user", "content": "What is the weather like in Paris today?"}]
    answer = client.chat.completions.create(model=MODEL, tools=tools, tool_choice="required", messages=question)
    call = answer.choices[0].message.tool_calls[0]
    out = client.responses.create(model=MODEL, instructions="Be brief.", input="What is the capital of France?")
    print(json.dumps({"finish": answer.choices[0].finish_reason, "call": [call.function.name, json.loads(call.function.arguments)],
                      "status": out.status, "text": out.output_text}))
    """
    out = run(server, "openai3", tmp_path, code)
    assert out["finish"] == "tool_calls"
    assert out["call"][0] == "get_weather" and isinstance(out["call"][1]["city"], str)  # README: {"city": "Paris"}
    assert out["status"] in {"completed", "incomplete"} and out["text"].strip()
