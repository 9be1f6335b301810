"""Tool calls on /v1/chat/completions: the pure module (prompt text, grammars, reading answers back), then the
official `openai` client over real HTTP against the tiny random model (only the grammar makes its answers
calls, which is the point), a tiny model with a Hermes-style template (the native format), and the embedded
default model, SmolLM2, in a real `python -m handler` process (the generic format, as on a deployment)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from llama_cpp import LlamaGrammar

from handler.app import create_app
from handler.cli.assemble_model import MODELS, MODELS_DIR, assemble
from handler.core.errors import BadRequest
from handler.core.settings import Settings
from handler.core.types import ChatMessage, ToolCall, ToolSpec
from handler.engine.chat_format import ChatTemplate
from handler.engine.model_files.gguf_header import ChatMetadata
from handler.service.tool_calls import (
    ToolChoice,
    ToolRequest,
    ToolStyle,
    argument_pieces,
    call_id,
    plan_tools,
    tool_request,
    tool_style,
)
from tests.conftest import LiveServer, client_for
from tests.helpers.server import crash_message, service_process
from tests.tiny_gguf import write_tiny_gguf

WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "The city's name", "maxLength": 12},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME: dict[str, Any] = {
    "type": "object",
    "properties": {"zone": {"type": "string", "maxLength": 8}, "seconds": {"type": "boolean"}},
    "required": ["zone", "seconds"],
    "additionalProperties": False,
}
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}


def tool(name: str, parameters: dict[str, Any] | None, description: str = "") -> dict[str, Any]:
    function: dict[str, Any] = {"name": name, "description": description or f"The {name.replace('_', ' ')}"}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


TOOLS = [tool("get_weather", WEATHER, "The weather in a city"), tool("get_time", TIME, "The time in a zone")]
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_time"}}
SMOLLM2_CHATML = MODELS["smollm2"]
SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
HERMES_TEMPLATE = (  # as Qwen 2.5's: the tools in the system message, calls and results in tags
    "{% if tools %}<|im_start|>system\nYou may call functions: <tools>\n{% for tool in tools %}{{ tool | tojson }}\n"
    '{% endfor %}</tools>\nCall one as <tool_call>\n{"name": <name>, "arguments": <object>}\n</tool_call><|im_end|>\n'
    "{% endif %}{% for m in messages %}{% if m.role == 'tool' %}"
    "<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{% elif m.tool_calls %}<|im_start|>assistant\n{% for c in m.tool_calls %}"
    '<tool_call>\n{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}\n</tool_call>\n'
    "{% endfor %}<|im_end|>\n{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}"
    "{% endfor %}<|im_start|>assistant\n"
)
LLAMA3_TEMPLATE = (  # as Llama 3.1's: the tools in the system message, a call as JSON, results as ipython
    "{% if tools %}<|start_header_id|>system<|end_header_id|>\n\nYou may call: {% for t in tools %}{{ t | tojson }}\n"
    '{% endfor %}Answer a call as {"name": function name, "parameters": its arguments}<|eot_id|>{% endif %}'
    "{% for m in messages %}{% if m.role == 'tool' %}<|start_header_id|>ipython<|end_header_id|>\n\n"
    "{{ m.content }}<|eot_id|>{% elif m.tool_calls %}<|start_header_id|>assistant<|end_header_id|>\n\n"
    '{"name": "{{ m.tool_calls[0].function.name }}", "parameters": {{ m.tool_calls[0].function.arguments | tojson }}}'
    "<|eot_id|>{% else %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content }}<|eot_id|>{% endif %}"
    "{% endfor %}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
MISTRAL_TEMPLATE = (  # as Mistral Nemo's: the tools before the question, calls as a list, 9-character ids
    "{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}{% for m in messages %}"
    "{% if m.role == 'tool' %}[TOOL_RESULTS]{{ m.tool_call_id }}: {{ m.content }}[/TOOL_RESULTS]"
    "{% elif m.tool_calls %}[TOOL_CALLS][{% for c in m.tool_calls %}"
    "{% if not (c.id is string and c.id | length == 9) %}{{ raise_exception('Tool call IDs should be "
    "alphanumeric strings with length 9!') }}{% endif %}"
    '{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}, "id": "{{ c.id }}"}'
    "{% endfor %}]</s>{% elif m.role == 'user' %}[INST]{{ m.content }}[/INST]{% else %}{{ m.content }}</s>"
    "{% endif %}{% endfor %}"
)


AUTO = ToolChoice()


def spec(name: str, parameters: dict[str, Any] | None = None) -> ToolSpec:
    return ToolSpec(name, f"The {name}", json.dumps(parameters if parameters is not None else SCHEMAS[name]))


def request_of(
    choice: ToolChoice = AUTO, parallel: bool = False, names: tuple[str, ...] = ("get_weather", "get_time")
) -> ToolRequest:
    request = tool_request([spec(name) for name in names], choice, parallel)
    assert request is not None
    return request


def arguments_of(call: Any) -> dict[str, Any]:
    """A call's arguments, parsed and checked against its tool's schema."""
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, SCHEMAS[call.function.name])
    return arguments  # type: ignore[no-any-return]


def assert_valid_answer(choice: Any) -> None:
    """Either shape OpenAI answers with: text, or calls whose arguments follow their schemas."""
    message = choice.message
    if message.tool_calls:
        assert choice.finish_reason == "tool_calls" and message.content is None
        for call in message.tool_calls:
            assert call.type == "function" and call.id.startswith("call_")
            arguments_of(call)
    else:
        assert isinstance(message.content, str) and choice.finish_reason in {"stop", "length"}


# The pure module: what the model is shown, the grammars, the answers read back.


def test_the_style_follows_the_template() -> None:
    assert tool_style(None) is ToolStyle.GENERIC
    assert tool_style(SMOL_TEMPLATE) is ToolStyle.GENERIC  # the default model's ChatML knows no tools
    assert tool_style(HERMES_TEMPLATE) is ToolStyle.HERMES
    assert tool_style("{{ '<tool_call>' }} without the word") is ToolStyle.GENERIC
    assert tool_style(LLAMA3_TEMPLATE) is ToolStyle.LLAMA3
    assert tool_style("{% if tools %}{{ '<|python_tag|>' }}{% endif %}") is ToolStyle.LLAMA3
    assert tool_style("{{ tools }} ipython, no parameters") is ToolStyle.GENERIC
    assert tool_style("{{ '\"parameters\"' }} ipython, but no tool list") is ToolStyle.GENERIC
    assert tool_style(MISTRAL_TEMPLATE) is ToolStyle.MISTRAL
    assert tool_style("{{ '[TOOL_CALLS]' }} without the word") is ToolStyle.GENERIC


def test_the_generic_prompt_lists_the_tools_in_a_system_message() -> None:
    messages = [ChatMessage("system", "Be brief."), ChatMessage("user", "Weather?")]
    plan = plan_tools(request_of(), messages, SMOL_TEMPLATE)
    system, user = plan.messages
    assert system.role == "system" and system.content.startswith("Be brief.\n\n")
    assert '"name": "get_weather"' in system.content and '"name": "get_time"' in system.content
    assert '"maxLength": 12' in system.content  # the parameters' schema, as sent
    assert '{"tool_call": {"name": "<tool name>"' in system.content and '{"response":' in system.content
    assert user == messages[1]
    assert plan.tools == () and plan.reads_calls  # the template never sees tools: the messages carry them
    alone = plan_tools(request_of(), messages[1:], SMOL_TEMPLATE)
    assert [m.role for m in alone.messages] == ["system", "user"]  # a system message of its own


def test_the_generic_prompt_says_what_each_choice_asks() -> None:
    messages = [ChatMessage("user", "Weather?")]

    def system(request: ToolRequest) -> str:
        return plan_tools(request, messages, None).messages[0].content

    required = system(request_of(ToolChoice("required")))
    assert "Call one of them" in required and '"response"' not in required
    named = system(request_of(ToolChoice("function", "get_time")))
    assert "Call the tool `get_time`" in named and '"name": "get_weather"' not in named  # only the named tool
    parallel = system(request_of(parallel=True))
    assert '{"tool_calls": [{"name": "<tool name>"' in parallel
    none = plan_tools(request_of(ToolChoice("none")), messages, None)
    assert none.messages == tuple(messages) and none.grammar is None and not none.reads_calls


def test_generic_grammars_hold_the_answer_to_a_call_or_a_reply() -> None:
    messages = [ChatMessage("user", "Weather?")]
    auto = plan_tools(request_of(), messages, None).grammar
    required = plan_tools(request_of(ToolChoice("required")), messages, None).grammar
    named = plan_tools(request_of(ToolChoice("function", "get_weather")), messages, None).grammar
    parallel = plan_tools(request_of(ToolChoice("required"), parallel=True), messages, None).grammar
    assert auto is not None and required is not None and named is not None and parallel is not None
    assert '"\\"tool_call\\""' in auto and '"\\"response\\""' in auto
    assert '"\\"tool_call\\""' in required and "response" not in required
    assert '"\\"get_weather\\""' in required and '"\\"get_time\\""' in required
    assert '"\\"get_weather\\""' in named and "get_time" not in named
    assert '"\\"tool_calls\\""' in parallel and '"\\"tool_call\\""' not in parallel
    assert '"\\"celsius\\""' in named  # the parameters' enum, from their schema
    for grammar in (auto, required, named, parallel):
        LlamaGrammar.from_string(grammar, verbose=False)  # llama.cpp parses it


def test_hermes_templates_get_the_tools_and_a_framed_grammar_when_a_call_is_asked() -> None:
    messages = [ChatMessage("user", "Weather?")]
    auto = plan_tools(request_of(), messages, HERMES_TEMPLATE)
    assert auto.style is ToolStyle.HERMES and auto.messages == tuple(messages)
    assert [t.name for t in auto.tools] == ["get_weather", "get_time"] and auto.grammar is None  # free, as trained
    required = plan_tools(request_of(ToolChoice("required")), messages, HERMES_TEMPLATE).grammar
    assert required is not None
    assert required.startswith('root ::= "<tool_call>\\n" framed-value "\\n</tool_call>"\n')
    parallel = plan_tools(request_of(ToolChoice("required"), parallel=True), messages, HERMES_TEMPLATE).grammar
    assert parallel is not None and '("\\n" "<tool_call>\\n" framed-value "\\n</tool_call>")*' in parallel
    for grammar in (required, parallel):
        LlamaGrammar.from_string(grammar, verbose=False)
    none = plan_tools(request_of(ToolChoice("none")), messages, HERMES_TEMPLATE)
    assert none.tools == () and not none.reads_calls


def test_native_templates_get_the_tools_and_grammars_in_their_own_format() -> None:
    messages = [ChatMessage("user", "x")]
    for template in (LLAMA3_TEMPLATE, MISTRAL_TEMPLATE):
        auto = plan_tools(request_of(), messages, template)
        assert auto.grammar is None and auto.tools == request_of().tools and auto.messages == tuple(messages)
        none = plan_tools(request_of(ToolChoice("none")), messages, template)
        assert none.grammar is None and none.tools == () and not none.reads_calls
    llama = plan_tools(request_of(ToolChoice("required")), messages, LLAMA3_TEMPLATE).grammar
    assert llama is not None and '"\\"parameters\\""' in llama and '"\\"arguments\\""' not in llama
    assert '"\\"get_time\\""' in llama and '"\\"get_weather\\""' in llama
    named = plan_tools(request_of(ToolChoice("function", "get_time")), messages, LLAMA3_TEMPLATE).grammar
    assert named is not None and '"\\"get_time\\""' in named and "get_weather" not in named
    mistral = plan_tools(request_of(ToolChoice("required")), messages, MISTRAL_TEMPLATE).grammar
    assert mistral is not None and mistral.startswith('root ::= "[TOOL_CALLS]" ')
    assert '"\\"arguments\\""' in mistral and '"\\"parameters\\""' not in mistral
    parallel = plan_tools(request_of(ToolChoice("required"), parallel=True), messages, MISTRAL_TEMPLATE).grammar
    assert parallel is not None and parallel != mistral  # one call at most, unless parallel
    for grammar in (llama, named, mistral, parallel):
        LlamaGrammar.from_string(grammar, verbose=False)


def test_native_templates_render_the_tools_and_the_history() -> None:
    call = ToolCall("call_" + "a" * 24, "get_time", '{"zone": "CET"}')
    history = [
        ChatMessage("user", "What time is it?"),
        ChatMessage("assistant", "", (call,)),
        ChatMessage("tool", "12:00", tool_call_id=call.id),
    ]
    llama = plan_tools(request_of(), history, LLAMA3_TEMPLATE)
    assert llama.messages[1].tool_calls == (call,)  # as they are
    text = "".join(
        s.text
        for s in ChatTemplate(ChatMetadata(LLAMA3_TEMPLATE, "<s>", "</s>"), LLAMA3_TEMPLATE)
        .render(llama.messages, llama.tools)
        .segments
    )
    assert '"name": "get_weather"' in text and '{"name": "get_time", "parameters": {"zone": "CET"}}' in text
    assert "<|start_header_id|>ipython<|end_header_id|>\n\n12:00" in text
    mistral = plan_tools(request_of(), history, MISTRAL_TEMPLATE)
    short = mistral.messages[1].tool_calls[0].id
    assert len(short) == 9 and short.isalnum() and mistral.messages[2].tool_call_id == short
    assert plan_tools(request_of(), history, MISTRAL_TEMPLATE).messages == mistral.messages  # the same each time
    template = ChatTemplate(ChatMetadata(MISTRAL_TEMPLATE, "<s>", "</s>"), MISTRAL_TEMPLATE)
    text = "".join(s.text for s in template.render(mistral.messages, mistral.tools).segments)
    assert f'[TOOL_CALLS][{{"name": "get_time", "arguments": {{"zone": "CET"}}, "id": "{short}"}}]' in text
    assert f"[TOOL_RESULTS]{short}: 12:00[/TOOL_RESULTS]" in text and '"name": "get_time"' in text
    with pytest.raises(BadRequest):  # the ids as they came: what the template refuses
        template.render(tuple(history), mistral.tools)


def test_a_hermes_template_renders_the_tools_and_the_history() -> None:
    template = ChatTemplate(ChatMetadata(HERMES_TEMPLATE, "<s>", "</s>"), HERMES_TEMPLATE)
    history = (
        ChatMessage("user", "Weather?"),
        ChatMessage("assistant", "", (ToolCall("call_1", "get_weather", '{"city": "Oslo", "unit": "celsius"}'),)),
        ChatMessage("tool", '{"temp": 3}', tool_call_id="call_1"),
    )
    plan = plan_tools(request_of(), history, HERMES_TEMPLATE)
    text = template.render(plan.messages, plan.tools).full_text
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in text
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}\n</tool_call>' in text
    )
    assert '<tool_response>\n{"temp": 3}\n</tool_response>' in text
    assert "<tools>" not in template.render(plan.messages).full_text


def test_the_generic_history_writes_calls_as_json_and_results_as_user_messages() -> None:
    history = [
        ChatMessage("user", "Weather and time?"),
        ChatMessage(
            "assistant",
            "",
            (
                ToolCall("call_a", "get_weather", '{"city":"Oslo","unit":"celsius"}'),
                ToolCall("call_b", "get_time", '{"zone":"CET","seconds":false}'),
            ),
        ),
        ChatMessage("tool", "3 degrees", tool_call_id="call_a"),
        ChatMessage("tool", "12:00", tool_call_id="call_b"),
    ]
    plan = plan_tools(request_of(ToolChoice("none")), history, SMOL_TEMPLATE)
    assert [m.role for m in plan.messages] == ["user", "assistant", "user"]
    assert json.loads(plan.messages[1].content) == {
        "tool_calls": [
            {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}},
            {"name": "get_time", "arguments": {"zone": "CET", "seconds": False}},
        ]
    }
    results = [json.loads(line) for line in plan.messages[2].content.splitlines()]
    assert results == [
        {"tool_response": {"tool": "get_weather", "content": "3 degrees"}},
        {"tool_response": {"tool": "get_time", "content": "12:00"}},
    ]
    one = plan_tools(None, [*history[:2], history[2]], None)
    assert "tool_calls" in json.loads(one.messages[1].content)  # two calls stay a list without parallel
    single = [history[0], ChatMessage("assistant", "Let me see.", history[1].tool_calls[:1]), history[2]]
    assert plan_tools(None, single, None).messages[1].content == (
        'Let me see.\n\n{"tool_call": {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}}'
    )


def test_a_tool_result_must_answer_a_call_before_it() -> None:
    for history in (
        [ChatMessage("user", "x"), ChatMessage("tool", "r", tool_call_id="call_1")],
        [
            ChatMessage("assistant", "", (ToolCall("call_1", "get_time", "{}"),)),
            ChatMessage("user", "x"),
            ChatMessage("tool", "r", tool_call_id="call_1"),  # the call was before another turn
        ],
        [
            ChatMessage("assistant", "", (ToolCall("call_1", "get_time", "{}"),)),
            ChatMessage("tool", "r", tool_call_id="2"),
        ],
    ):
        with pytest.raises(BadRequest) as caught:
            plan_tools(None, history, None)
        assert caught.value.param == f"messages.{len(history) - 1}.tool_call_id"


@pytest.mark.parametrize(
    ("tools", "choice", "param"),
    [
        ([spec("get_time"), spec("get_time")], None, "tools.1.function.name"),
        ([ToolSpec("get time")], None, "tools.0.function.name"),
        ([spec("get_time")], ToolChoice("function", "get_weather"), "tool_choice"),
        ([], ToolChoice("required"), "tool_choice"),
    ],
)
def test_tool_requests_are_checked(tools: list[ToolSpec], choice: ToolChoice | None, param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        tool_request(tools, choice, None)
    assert caught.value.param == param


def test_no_tools_is_no_tool_request() -> None:
    assert tool_request([], None, True) is None
    assert tool_request([], ToolChoice("none"), None) is None
    assert tool_request([spec("get_time")], None, None) == ToolRequest((spec("get_time"),), ToolChoice("auto"), False)


def test_a_schema_the_converter_rejects_names_its_tool() -> None:
    bad = ToolSpec("bad", None, json.dumps({"type": "strin"}))
    request = tool_request([spec("get_time"), bad], ToolChoice("required"), None)
    with pytest.raises(BadRequest) as caught:
        plan_tools(request, [ChatMessage("user", "x")], None)
    assert caught.value.param == "tools.1.function.parameters" and "Unrecognized schema" in caught.value.public_message


GENERIC_ANSWERS = [
    '{"tool_call": {"name": "get_time", "arguments": {"zone": "CET", "seconds": true}}}',
    '{"tool_calls": [{"name": "get_time", "arguments": {"zone": "UTC", "seconds": false}}, '
    '{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}]}',
    '{"response": "Hello, \\"world\\" \\u00e9\\ud83d\\ude00 and a lone \\ud800 one."}',
    '{ "response" : "cut by max_tokens \\u00',
    '{"tool_call": {"name": "get_time", "argu',
    "not json at all",
    '{"other": 1}',
]


def test_generic_answers_read_back() -> None:
    plan = plan_tools(request_of(), [ChatMessage("user", "x")], None)
    one, two, reply, cut_reply, cut_call, text, other = (plan.parse(answer, "rid") for answer in GENERIC_ANSWERS)
    assert one.content is None and one.calls == (
        ToolCall(call_id("rid", 0), "get_time", '{"zone":"CET","seconds":true}'),
    )
    assert [c.name for c in two.calls] == ["get_time", "get_weather"] and two.calls[1].id == call_id("rid", 1)
    assert json.loads(two.calls[1].arguments) == {"city": "Oslo", "unit": "celsius"}
    assert reply.content == 'Hello, "world" é😀 and a lone \ufffd one.' and not reply.calls
    assert cut_reply.content == "cut by max_tokens " and not cut_reply.calls  # the reply so far
    assert (cut_call.content, text.content, other.content) == (GENERIC_ANSWERS[4], "not json at all", '{"other": 1}')
    assert call_id("rid", 0) != call_id("rid2", 0) and call_id("rid", 0).startswith("call_")
    assert len(call_id("rid", 0)) == len("call_") + 24


HERMES_ANSWERS = [
    'Let me look.\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET", "seconds": true}}\n</tool_call>',
    '<tool_call>\n{"name": "get_time", "arguments": {"zone": "A"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}\n</tool_call>',
    '<tool_call>\n{"name": "get_time", "arguments": {"zone": "B"}}',  # no closing tag: the end closes it
    "Just text, <tool and a < sign.  \n",
    "Text <tool_call>\n{broken json}\n</tool_call>",
    '<tool_call>{"arguments": {}}</tool_call>',  # no name
]


def test_hermes_answers_read_back() -> None:
    plan = plan_tools(request_of(), [ChatMessage("user", "x")], HERMES_TEMPLATE)
    before, two, unclosed, text, broken, nameless = (plan.parse(answer, "r") for answer in HERMES_ANSWERS)
    assert before.content == "Let me look." and before.calls == (
        ToolCall(call_id("r", 0), "get_time", '{"zone":"CET","seconds":true}'),
    )
    assert two.content is None and [(c.name, c.arguments) for c in two.calls] == [
        ("get_time", '{"zone":"A"}'),
        ("get_weather", '{"city": "Oslo"}'),  # arguments written as a string stay as written
    ]
    assert [c.arguments for c in unclosed.calls] == ['{"zone":"B"}']
    for answer, parsed in ((HERMES_ANSWERS[3], text), (HERMES_ANSWERS[4], broken), (HERMES_ANSWERS[5], nameless)):
        assert parsed.content == answer and parsed.calls == ()


LLAMA3_ANSWERS = [
    '{"name": "get_time", "parameters": {"zone": "CET", "seconds": true}}',
    '<|python_tag|>{"type": "function", "name": "get_weather", "parameters": {"city": "Oslo", "unit": "celsius"}}',
    'Let me check. <|python_tag|>{"name": "get_time", "parameters": {"zone": "A"}}',
    ' {"name": "get_time", "parameters": {"zone": "A"}}; {"name": "get_weather", "parameters": "{\\"city\\": 1}"}',
    "Just text with {braces} and a <|python sign.",
    '{"name": "get_time", "arguments": {"zone": "A"}}',  # `arguments` is not Llama's word
    '{"name": "get_time", "parameters": {"zone": "A"}} and text after',
    '{"type": "code", "name": "get_time", "parameters": {}}',
    '{"name": "get_time", "parameters": {"zo',  # cut by max_tokens
]


def test_llama3_answers_read_back() -> None:
    plan = plan_tools(request_of(), [ChatMessage("user", "x")], LLAMA3_TEMPLATE)
    bare, tagged, before, two, *texts = (plan.parse(answer, "r") for answer in LLAMA3_ANSWERS)
    assert bare.content is None and bare.calls == (
        ToolCall(call_id("r", 0), "get_time", '{"zone":"CET","seconds":true}'),
    )
    assert tagged.content is None and [(c.name, c.arguments) for c in tagged.calls] == [
        ("get_weather", '{"city":"Oslo","unit":"celsius"}')
    ]
    assert before.content == "Let me check." and [c.arguments for c in before.calls] == ['{"zone":"A"}']
    assert two.content is None and [(c.id, c.name, c.arguments) for c in two.calls] == [
        (call_id("r", 0), "get_time", '{"zone":"A"}'),
        (call_id("r", 1), "get_weather", '{"city": 1}'),  # parameters written as a string stay as written
    ]
    for answer, parsed in zip(LLAMA3_ANSWERS[4:], texts, strict=True):
        assert parsed.content == answer and parsed.calls == ()


MISTRAL_ANSWERS = [
    'Sure.\n[TOOL_CALLS][{"name": "get_time", "arguments": {"zone": "CET", "seconds": true}, "id": "abcdefghi"}]',
    '[TOOL_CALLS] [{"name": "get_time", "arguments": {"zone": "A"}}, {"name": "get_weather", "arguments": {}}]\n',
    '[TOOL_CALLS]get_time[ARGS]{"zone": "B"}[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city": "C"}',
    "No calls here, [TOOL_ and [brackets].",
    "[TOOL_CALLS][]",
    '[TOOL_CALLS]{"name": "get_time", "arguments": {}}',  # not a list
    '[TOOL_CALLS][{"name": "get_time", "arguments": {}}] and text after',
    '[TOOL_CALLS][{"arguments": {}}]',  # no name
    'Text [TOOL_CALLS][{"name": "get_time", "argu',  # cut by max_tokens
]


def test_mistral_answers_read_back() -> None:
    plan = plan_tools(request_of(), [ChatMessage("user", "x")], MISTRAL_TEMPLATE)
    before, listed, named, *texts = (plan.parse(answer, "r") for answer in MISTRAL_ANSWERS)
    assert before.content == "Sure." and before.calls == (
        ToolCall(call_id("r", 0), "get_time", '{"zone":"CET","seconds":true}'),
    )
    assert listed.content is None and [(c.id, c.name, c.arguments) for c in listed.calls] == [
        (call_id("r", 0), "get_time", '{"zone":"A"}'),
        (call_id("r", 1), "get_weather", "{}"),
    ]
    assert named.content is None and [(c.name, c.arguments) for c in named.calls] == [
        ("get_time", '{"zone":"B"}'),
        ("get_weather", '{"city":"C"}'),
    ]
    for answer, parsed in zip(MISTRAL_ANSWERS[3:], texts, strict=True):
        assert parsed.content == answer and parsed.calls == ()


STYLES = {
    "generic": (None, GENERIC_ANSWERS),
    "hermes": (HERMES_TEMPLATE, HERMES_ANSWERS),
    "llama3": (LLAMA3_TEMPLATE, LLAMA3_ANSWERS),
    "mistral": (MISTRAL_TEMPLATE, MISTRAL_ANSWERS),
}


@pytest.mark.parametrize("style", list(STYLES))
def test_a_stream_adds_up_to_the_answer_read_whole(style: str) -> None:
    template, answers = STYLES[style]
    plan = plan_tools(request_of(), [ChatMessage("user", "x")], template)
    assert plan.style is ToolStyle(style)
    rng = random.Random(7)
    others = [answer for _, style_answers in STYLES.values() for answer in style_answers]
    for answer in [*answers, *others, ""]:
        whole = plan.parse(answer, "rid")
        for cuts in ([*range(len(answer))], sorted(rng.sample(range(len(answer) + 1), min(3, len(answer) + 1)))):
            reader = plan.stream("rid")
            pieces = [answer[a:b] for a, b in zip([0, *cuts], [*cuts, len(answer)], strict=True)]
            streamed = "".join(reader.feed(piece) for piece in pieces)
            rest, calls = reader.finish(answer)
            assert streamed + rest == (whole.content or ""), (answer, pieces)
            assert calls == whole.calls
    reader = plan.stream("rid")
    if style == "generic":
        assert reader.feed('{"response": "Hel') == "Hel" and reader.feed("lo \\u00") == "lo "
        assert reader.feed('e9!"}') == "é!"
    elif style == "hermes":
        assert reader.feed("Let me <tool") == "Let me" and reader.feed("ing>") == " <tooling>"
    elif style == "mistral":
        assert reader.feed("Let me [TOOL_") == "Let me" and reader.feed("S]") == " [TOOL_S]"
    else:
        assert reader.feed("Let me <|python") == "Let me" and reader.feed("|>") == " <|python|>"
        reader = plan.stream("rid")
        assert reader.feed(' {"name": "get_time"') == "" and reader.feed("}") == ""  # held: it may be a call


def test_argument_pieces_add_up() -> None:
    text = json.dumps({"a": "x" * 70, "b": [1, 2, 3]})
    pieces = argument_pieces(text)
    assert len(pieces) > 2 and "".join(pieces) == text
    assert argument_pieces("") == [""]


# Over HTTP, on the tiny random model (no template: the generic format, through the config template).


@pytest.fixture(scope="module")
def tool_settings(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The tiny model's tokens are bytes: a tools prompt needs a longer context than the model's own 512."""
    return Settings(
        model_path=str(tiny_model),
        n_ctx=4096,
        n_gpu_layers=0,
        n_threads=1,
        flash_attn=False,
        max_tokens_default=16,
        cache_dir=str(tmp_path_factory.mktemp("cache")),
        log_level="WARNING",
    )


@pytest.fixture(scope="module")
def tiny_server(tool_settings: Settings) -> Iterator[LiveServer]:
    with LiveServer(create_app(tool_settings)) as live:
        yield live


@pytest.fixture
def tiny(tiny_server: LiveServer) -> openai.OpenAI:
    return client_for(tiny_server)


@pytest.fixture
def tiny_http(tiny_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tiny_server.url, timeout=60) as client:
        yield client


def ask(client: openai.OpenAI, tool_choice: Any = "required", **extra: Any) -> Any:
    body: dict[str, Any] = {"model": "tiny", "messages": QUESTION, "tools": TOOLS, "max_tokens": 400}
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    return client.chat.completions.create(**{**body, **extra})


def test_a_required_call_follows_its_tools_schema(tiny: openai.OpenAI) -> None:
    for seed in range(3):
        answer = ask(tiny, seed=seed, temperature=1.0)
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (call,) = choice.message.tool_calls or []
        assert call.type == "function" and call.id.startswith("call_") and call.function.name in SCHEMAS
        arguments_of(call)


def test_a_named_function_is_the_one_called(tiny: openai.OpenAI) -> None:
    for seed in range(3):
        choice = ask(tiny, NAMED, seed=seed, temperature=1.0).choices[0]
        (call,) = choice.message.tool_calls or []
        assert call.function.name == "get_time"
        assert set(arguments_of(call)) == {"zone", "seconds"}


def test_parallel_calls_are_a_list_of_calls(tiny: openai.OpenAI) -> None:
    counts = []
    for seed in range(4):
        choice = ask(tiny, parallel_tool_calls=True, max_tokens=1000, seed=seed, temperature=1.0).choices[0]
        calls = choice.message.tool_calls or []
        assert choice.finish_reason == "tool_calls" and len(calls) >= 1
        assert len({c.id for c in calls}) == len(calls)
        for call in calls:
            arguments_of(call)
        counts.append(len(calls))
    assert max(counts) > 1


def test_auto_answers_either_way_and_none_answers_in_text(tiny: openai.OpenAI) -> None:
    for seed in range(3):
        assert_valid_answer(ask(tiny, "auto", seed=seed, temperature=1.0).choices[0])
        assert_valid_answer(ask(tiny, None, seed=seed, temperature=1.0).choices[0])  # auto, the default
    none = ask(tiny, "none", max_tokens=8).choices[0]
    assert none.message.tool_calls is None and isinstance(none.message.content, str)
    assert none.finish_reason in {"stop", "length"}


def test_a_function_without_parameters_is_called_with_an_empty_object(tiny: openai.OpenAI) -> None:
    answer = ask(tiny, tools=[tool("ping", None)])
    (call,) = answer.choices[0].message.tool_calls or []
    assert call.function.name == "ping" and json.loads(call.function.arguments) == {}


def test_a_two_turn_exchange_is_answered(tiny: openai.OpenAI) -> None:
    first = ask(tiny, NAMED).choices[0].message
    (call,) = first.tool_calls or []
    history: list[Any] = [*QUESTION, first, {"role": "tool", "tool_call_id": call.id, "content": '{"time": "12:00"}'}]
    final = tiny.chat.completions.create(model="tiny", messages=history, tools=TOOLS, max_tokens=300)
    assert_valid_answer(final.choices[0])
    text = tiny.chat.completions.create(model="tiny", messages=history, tools=TOOLS, tool_choice="none", max_tokens=8)
    assert text.choices[0].message.tool_calls is None and isinstance(text.choices[0].message.content, str)
    without_tools = tiny.chat.completions.create(model="tiny", messages=history, max_tokens=8)  # history alone
    assert isinstance(without_tools.choices[0].message.content, str)


def streamed_calls(chunks: list[Any]) -> tuple[str, list[dict[str, str]], str | None]:
    """The text, the calls (put together from their pieces, as a client does) and the finish reason."""
    text, calls, finish = "", [], None
    for chunk in chunks:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        text += delta.content or ""
        for piece in delta.tool_calls or []:
            if piece.id is not None:
                assert piece.index == len(calls) and piece.type == "function" and piece.function.arguments == ""
                calls.append({"id": piece.id, "name": piece.function.name, "arguments": ""})
            else:
                assert piece.function.name is None
                calls[piece.index]["arguments"] += piece.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    return text, calls, finish


def unstreamed_calls(answer: Any) -> list[dict[str, str]]:
    return [
        {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
        for c in answer.choices[0].message.tool_calls or []
    ]


@pytest.mark.parametrize("tool_choice", ["required", NAMED, "auto"])
def test_streamed_calls_add_up_to_the_unstreamed_ones(tiny: openai.OpenAI, tool_choice: Any) -> None:
    request: dict[str, Any] = {"tool_choice": tool_choice, "temperature": 0, "max_tokens": 400}
    chunks = list(ask(tiny, **request, stream=True, extra_headers={"Cache-Control": "no-cache"}))
    text, calls, finish = streamed_calls(chunks)
    fresh = ask(tiny, **request, extra_headers={"Cache-Control": "no-cache"})  # generated again, whole
    cached = ask(tiny, **request)
    assert [c["arguments"] for c in calls] == [c["arguments"] for c in unstreamed_calls(fresh)]
    assert [c["name"] for c in calls] == [c["name"] for c in unstreamed_calls(fresh)]
    assert text == (fresh.choices[0].message.content or "") and finish == fresh.choices[0].finish_reason
    if tool_choice != "auto":
        assert finish == "tool_calls" and len(calls) == 1
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.tool_calls) >= 2  # a head, then pieces
    hit_text, hit_calls, hit_finish = streamed_calls(list(ask(tiny, **request, stream=True)))  # the cache's, whole
    assert (hit_text, hit_finish) == (text, finish)
    assert [(c["name"], c["arguments"]) for c in hit_calls] == [(c["name"], c["arguments"]) for c in calls]
    assert [c["arguments"] for c in unstreamed_calls(cached)] == [c["arguments"] for c in calls]


def test_the_tools_and_the_choice_are_part_of_the_key(tiny_http: httpx.Client) -> None:
    messages = [{"role": "user", "content": "Keyed: the weather?"}]  # asked by no other test of this server
    base = {"model": "tiny", "messages": messages, "tools": TOOLS, "tool_choice": "required", "max_tokens": 400}

    def source(**change: Any) -> str:
        response = tiny_http.post("/v1/chat/completions", json={**base, **change})
        assert response.status_code == 200, response.text
        return str(response.headers["x-cache"])

    assert source() == "MISS"
    assert source() == "HIT-MEMORY"  # an answer with tool calls is cached like any other
    ids = [
        tiny_http.post("/v1/chat/completions", json=base).json()["choices"][0]["message"]["tool_calls"][0]["id"]
        for _ in range(2)
    ]
    assert ids[0] != ids[1]  # the same answer, but each response's calls have ids of their own
    changes: list[dict[str, Any]] = [
        {"tools": TOOLS[:1]},
        {"tools": [TOOLS[1], TOOLS[0]]},
        {"tools": [tool("get_weather", {**WEATHER, "required": ["city"]}), TOOLS[1]]},
        {"tool_choice": "auto"},
        {"tool_choice": NAMED},
        {"parallel_tool_calls": True},
        {"tools": None, "tool_choice": None, "max_tokens": 8},
    ]
    for change in changes:
        assert source(**change) == "MISS", change
    assert source(tool_choice=NAMED) == "HIT-MEMORY"


def test_a_call_cut_by_max_tokens_is_length_and_not_stored(tiny_http: httpx.Client) -> None:
    body = {"model": "tiny", "messages": QUESTION, "tools": TOOLS, "tool_choice": "required", "max_tokens": 6}
    for _ in range(2):
        response = tiny_http.post("/v1/chat/completions", json=body)
        choice = response.json()["choices"][0]
        assert response.headers["x-cache"] == "MISS"
        assert choice["finish_reason"] == "length" and choice["message"]["tool_calls"] is None
        assert choice["message"]["content"].replace(" ", "").startswith('{"tool')  # the text as far as it came


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tools": [tool("get time", TIME)]}, "tools.0.function.name"),
        ({"tools": [TOOLS[1], TOOLS[1]]}, "tools.1.function.name"),
        ({"tools": [tool("f", {"type": "strin"})]}, "tools.0.function.parameters"),
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": None, "tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        (
            {"messages": [*QUESTION, {"role": "tool", "tool_call_id": "call_9", "content": "x"}]},
            "messages.1.tool_call_id",
        ),
    ],
)
def test_bad_tool_requests_are_400s_naming_the_field(tiny: openai.OpenAI, change: dict[str, Any], param: str) -> None:
    body: dict[str, Any] = {"model": "tiny", "messages": QUESTION, "tools": TOOLS, "tool_choice": "required"}
    body.update(change)
    with pytest.raises(openai.BadRequestError) as caught:
        tiny.chat.completions.create(**{k: v for k, v in body.items() if v is not None})
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == param, error


@pytest.mark.parametrize(
    "message",
    [
        {"role": "tool", "content": "x"},  # no tool_call_id
        {"role": "user", "content": "x", "tool_call_id": "call_1"},
        {"role": "user", "content": None},
        {
            "role": "user",
            "content": "x",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
    ],
)
def test_malformed_tool_messages_are_400s(tiny_http: httpx.Client, message: dict[str, Any]) -> None:
    response = tiny_http.post("/v1/chat/completions", json={"model": "tiny", "messages": [*QUESTION, message]})
    assert response.status_code == 400 and response.json()["error"]["param"].startswith("messages.1"), response.text


def test_tools_are_refused_on_plain_completions(tiny_http: httpx.Client) -> None:
    response = tiny_http.post("/v1/completions", json={"model": "tiny", "prompt": "x", "tools": TOOLS})
    assert response.status_code == 400 and response.json()["error"]["param"] == "tools"


LEAF = st.one_of(
    st.integers(1, 8).map(lambda n: {"type": "string", "maxLength": n}),
    st.just({"type": "integer"}),
    st.just({"type": "number"}),
    st.just({"type": "boolean"}),
    st.lists(st.sampled_from(["red", "green", "a b", "é"]), min_size=1, max_size=3, unique=True).map(
        lambda values: {"enum": values}
    ),
)
PROPERTY = LEAF | LEAF.map(lambda item: {"type": "array", "items": item, "maxItems": 3})
PARAMETERS = st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True), PROPERTY, min_size=1, max_size=4
).flatmap(
    lambda properties: st.fixed_dictionaries(
        {
            "type": st.just("object"),
            "properties": st.just(properties),
            "required": st.lists(st.sampled_from(sorted(properties)), unique=True),
            "additionalProperties": st.just(False),
        }
    )
)


@hsettings(max_examples=10, deadline=None)
@given(parameters=PARAMETERS, named=st.booleans())
def test_every_required_call_validates_against_random_schemas(
    tiny_server: LiveServer, parameters: dict[str, Any], named: bool
) -> None:
    client = client_for(tiny_server)
    tools = [tool("fn", parameters), TOOLS[1]]
    choice: Any = {"type": "function", "function": {"name": "fn"}} if named else "required"
    answer = client.chat.completions.create(
        model="tiny", messages=QUESTION, tools=tools, tool_choice=choice, max_tokens=1000, extra_body={"cache": "off"}
    )
    (call,) = answer.choices[0].message.tool_calls or []
    assert answer.choices[0].finish_reason == "tool_calls"
    jsonschema.validate(json.loads(call.function.arguments), parameters if call.function.name == "fn" else TIME)
    assert call.function.name == "fn" or not named


# A template that lists tools itself: the native (Hermes) format, on the tiny model.


@pytest.fixture(scope="module")
def hermes(tool_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    model = write_tiny_gguf(tmp_path_factory.mktemp("hermes") / "hermes.gguf", chat_template=HERMES_TEMPLATE)
    with LiveServer(create_app(tool_settings.model_copy(update={"model_path": str(model)}))) as live:
        yield client_for(live)


def test_a_hermes_template_calls_in_its_own_format(hermes: openai.OpenAI) -> None:
    def create(**extra: Any) -> Any:
        return hermes.chat.completions.create(**{"model": "hermes", "messages": QUESTION, "max_tokens": 400, **extra})

    for choice in ("required", NAMED):
        answer = create(tools=TOOLS, tool_choice=choice).choices[0]
        assert answer.finish_reason == "tool_calls"
        (call,) = answer.message.tool_calls or []
        arguments_of(call)
        assert call.function.name == "get_time" or choice == "required"
    listed = create(tools=TOOLS, tool_choice="none", max_tokens=1).usage
    plain = create(max_tokens=1).usage
    assert listed is not None and plain is not None and listed.prompt_tokens == plain.prompt_tokens  # none: no tools
    offered = create(tools=TOOLS, tool_choice="auto", max_tokens=8)
    assert offered.usage is not None and offered.usage.prompt_tokens > plain.prompt_tokens + 200  # the template's list
    assert_valid_answer(offered.choices[0])  # free text (no grammar under auto), read for calls
    call = (create(tools=TOOLS, tool_choice=NAMED).choices[0].message.tool_calls or [])[0]
    history: list[Any] = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "12:00"},
    ]
    assert_valid_answer(create(messages=history, tools=TOOLS, max_tokens=16).choices[0])
    streamed = list(
        create(tools=TOOLS, tool_choice="required", stream=True, extra_headers={"Cache-Control": "no-cache"})
    )
    whole = create(tools=TOOLS, tool_choice="required")
    assert [c["arguments"] for c in streamed_calls(streamed)[1]] == [c["arguments"] for c in unstreamed_calls(whole)]


# The embedded default model, SmolLM2 (ChatML without tools: the generic format), in a real process.


@pytest.fixture(scope="module")
def smol() -> Iterator[openai.OpenAI]:
    path = assemble(SMOLLM2_CHATML, MODELS_DIR / SMOLLM2_CHATML.file_name)
    env = {
        "CHAT_MODEL_PATH": str(path),
        "CHAT_MODEL_SHA256": SMOLLM2_CHATML.sha256,
        "CHAT_CACHE_DIR": "",
        "CHAT_MODEL_NAME": "m",
        "CHAT_N_PARALLEL": "1",
        "CHAT_REUSE_PROMPT_PREFIX": "false",  # each answer as the model alone gives it: streamed equals whole
        "CHAT_LOG_LEVEL": "WARNING",
        "CHAT_METRICS": "off",
    }
    with service_process(env) as (url, process):
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0, timeout=300)
        assert process.poll() is None, crash_message(process.returncode)


SMOL_WEATHER = [
    tool(
        "get_weather",
        {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
        "Get the current weather in a city",
    )
]
SMOL_QUESTION = [{"role": "user", "content": "What is the weather like in Paris today?"}]


def smol_ask(client: openai.OpenAI, **extra: Any) -> Any:
    body = {"model": "m", "messages": SMOL_QUESTION, "tools": SMOL_WEATHER, "temperature": 0, "max_tokens": 80}
    return client.chat.completions.create(**{**body, **extra})


def test_smollm2_calls_a_tool_when_required_or_named(smol: openai.OpenAI) -> None:
    schema = SMOL_WEATHER[0]["function"]["parameters"]
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        answer = smol_ask(smol, tool_choice=choice).choices[0]
        assert answer.finish_reason == "tool_calls" and answer.message.content is None
        (call,) = answer.message.tool_calls or []
        assert call.function.name == "get_weather"
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, schema)
        assert arguments["city"].strip()


def test_smollm2_auto_and_a_second_turn(smol: openai.OpenAI) -> None:
    auto = smol_ask(smol).choices[0]
    if auto.message.tool_calls:
        assert auto.finish_reason == "tool_calls"
        jsonschema.validate(
            json.loads(auto.message.tool_calls[0].function.arguments), SMOL_WEATHER[0]["function"]["parameters"]
        )
    else:
        assert auto.message.content and auto.finish_reason in {"stop", "length"}
    first = smol_ask(smol, tool_choice="required").choices[0].message
    (call,) = first.tool_calls or []
    result = {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "sunny"}'}
    history: list[Any] = [*SMOL_QUESTION, first, result]
    after = smol_ask(smol, messages=history).choices[0]
    assert after.message.tool_calls or (after.message.content and after.finish_reason in {"stop", "length"})
    text = smol_ask(smol, messages=history, tool_choice="none").choices[0]
    assert text.message.tool_calls is None and text.message.content and text.message.content.strip()


def test_smollm2_streamed_call_adds_up_to_the_unstreamed_one(smol: openai.OpenAI) -> None:
    whole = smol_ask(smol, tool_choice="required", extra_body={"cache": "off"})
    streamed = list(smol_ask(smol, tool_choice="required", stream=True, extra_body={"cache": "off"}))
    text, calls, finish = streamed_calls(streamed)
    assert (text, finish) == ("", "tool_calls")
    assert [(c["name"], c["arguments"]) for c in calls] == [
        (c["name"], c["arguments"]) for c in unstreamed_calls(whole)
    ]
