"""Chat formats: the special tokens, the Jinja chat template and the tool-call syntax of each.

Plain data, kept apart from the renderer in acorn.chat.template so that training a
tokenizer (which reserves a format's special tokens) needs no Jinja. The
renderer and the assistant mask live in acorn.chat.template; tool-call parsing,
the streaming hold-back and the constrained-decoding grammar in acorn.chat.tools,
all three derived from the format's one ToolSyntax.

A new chat format is one entry in FORMATS:
  special_tokens  every special token the template writes (a tokenizer reserves them)
  bos/eos/pad     the template variables of the same names
  stop_tokens     the tokens that end an assistant turn (generation stops there)
  template        the Jinja template, written as the model's own tokenizer_config.json
                  ships it, so rendering matches transformers to the character
  tool_syntax     how that template writes tool calls (None: the format has none);
                  tests/chat/test_chat.py renders calls with the template and checks that the
                  parser gives them back and that the grammar accepts exactly that text
"""

from __future__ import annotations

from dataclasses import dataclass

from acorn.errors import AcornError


@dataclass(frozen=True)
class ToolSyntax:
    """How a format's template writes the tool calls of an assistant turn, after its content:

        content [after_content] begin call_open CALL call_close [separator call_open CALL call_close]...

    where CALL is one JSON object, {"name": ..., "<arguments_key>": {...}}, as
    Jinja's tojson writes it (", " and ": " between items, no other whitespace).

    Two shapes, which are all the parser knows (and all that open models use
    with plain JSON calls):
      blocks  call_close is set: each call is wrapped in call_open/call_close and
              may stand anywhere in the reply (Qwen/Hermes <tool_call>...</tool_call>);
              begin stays empty
      list    call_close is empty: `begin` once, then the calls with `separator`
              between them, to the end of the reply (Llama 3.1 <|python_tag|>)
    Whitespace at the edges of the markers is optional when parsing (it is JSON
    whitespace to the parser) but is written, and required by the grammar, as given.
    """

    call_open: str = ""  # before each call
    call_close: str = ""  # after each call; "" for the list shape
    separator: str = ""  # between two calls
    begin: str = ""  # once, before the first call (the list shape's opening tag)
    after_content: str = ""  # between the content, when there is some, and the first call
    arguments_key: str = "arguments"  # the key of the arguments object in CALL
    bare: bool = False  # a reply made only of calls may leave `begin` out (Llama 3.1 answers custom tools so)

    def __post_init__(self):
        # A wrong entry would give a parser that never finds a call: refuse it when the table is built.
        if self.call_close and self.begin:
            raise ValueError("a tool syntax with call_close (blocks) takes no begin")
        if not self.call_close and not self.begin.strip():
            raise ValueError("a tool syntax without call_close (a list of calls) needs a begin tag")
        if self.call_close and not self.call_open.strip():
            raise ValueError("a tool syntax with call_close (blocks) needs a call_open")


@dataclass(frozen=True)
class ChatFormat:
    name: str
    special_tokens: tuple[str, ...]
    bos_token: str
    eos_token: str
    pad_token: str
    stop_tokens: tuple[str, ...]
    template: str = ""
    tool_syntax: ToolSyntax | None = None  # None: the format cannot call tools


# ------------------------------------------------------------------ templates
# Written in the whitespace-controlled style of Qwen's templates: every tag
# strips the whitespace around it and all output text is a string literal, so
# the layout of the template source never leaks into the rendered chat.
# Each template accepts tool-call arguments as a dict (rendered with tojson) or
# as a JSON string (written verbatim, as transformers users pass them); Acorn's
# own apply_chat_template parses strings first, so both render identically.

ACORN_TEMPLATE = r"""{{- bos_token }}
{%- if messages[0].role == 'system' %}
    {%- set system_message = messages[0].content %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = '' %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if messages[0].role == 'system' or tools %}
    {{- '<|system|>' + system_message }}
    {%- if tools %}
        {%- if system_message %}{{- '\n\n' }}{%- endif %}
        {{- 'You can call these tools (JSON schemas, one per line):' }}
        {%- for tool in tools %}
            {{- '\n' + (tool | tojson) }}
        {%- endfor %}
    {%- endif %}
    {{- '<|end|>' }}
{%- endif %}
{%- for message in loop_messages %}
    {%- if message.role == 'assistant' %}
        {{- '<|assistant|>' }}
        {%- generation %}
            {%- if message.content is string %}{{- message.content }}{%- endif %}
            {%- if message.tool_calls is defined %}
                {%- for tool_call in message.tool_calls %}
                    {%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
                    {{- '<|tool_call|>{"name": ' + (tool_call.name | tojson) + ', "arguments": ' }}
                    {%- if tool_call.arguments is string %}{{- tool_call.arguments }}{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}
                    {{- '}<|/tool_call|>' }}
                {%- endfor %}
            {%- endif %}
            {{- '<|end|>' }}
        {%- endgeneration %}
    {%- elif message.role == 'tool' %}
        {{- '<|tool_output|>' + message.content + '<|/tool_output|>' }}
    {%- elif message.role == 'user' %}
        {{- '<|user|>' + message.content + '<|end|>' }}
    {%- elif message.role == 'system' %}
        {{- '<|system|>' + message.content + '<|end|>' }}
    {%- else %}
        {{- raise_exception('the acorn chat format has no role ' + message.role) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|assistant|>' }}
{%- endif %}
"""

CHATML_TEMPLATE = r"""{%- if messages[0].role == 'system' %}
    {%- set system_message = messages[0].content %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = '' %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if messages[0].role == 'system' or tools %}
    {{- '<|im_start|>system\n' + system_message }}
    {%- if tools %}
        {%- if system_message %}{{- '\n\n' }}{%- endif %}
        {{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}
        {%- for tool in tools %}
            {{- '\n' + (tool | tojson) }}
        {%- endfor %}
        {{- '\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' }}
    {%- endif %}
    {{- '<|im_end|>\n' }}
{%- endif %}
{%- for message in loop_messages %}
    {%- if message.role == 'assistant' %}
        {{- '<|im_start|>assistant\n' }}
        {%- generation %}
            {%- set has_content = message.content is string and message.content %}
            {%- if has_content %}{{- message.content }}{%- endif %}
            {%- if message.tool_calls is defined %}
                {%- for tool_call in message.tool_calls %}
                    {%- if has_content or not loop.first %}{{- '\n' }}{%- endif %}
                    {%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
                    {{- '<tool_call>\n{"name": ' + (tool_call.name | tojson) + ', "arguments": ' }}
                    {%- if tool_call.arguments is string %}{{- tool_call.arguments }}{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}
                    {{- '}\n</tool_call>' }}
                {%- endfor %}
            {%- endif %}
            {{- '<|im_end|>' }}
        {%- endgeneration %}
        {{- '\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or loop.previtem.role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\n<tool_response>\n' + message.content + '\n</tool_response>' }}
        {%- if loop.last or loop.nextitem.role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}
    {%- elif message.role in ['user', 'system'] %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- else %}
        {{- raise_exception('the chatml chat format has no role ' + message.role) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

LLAMA3_TEMPLATE = r"""{{- bos_token }}
{%- if messages[0].role == 'system' %}
    {%- set system_message = messages[0].content %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = '' %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if messages[0].role == 'system' or tools %}
    {{- '<|start_header_id|>system<|end_header_id|>\n\n' }}
    {%- if tools %}
        {{- 'Environment: ipython\n\n' }}
        {{- 'You have access to the following functions. To call a function, please respond with JSON for a function call. ' }}
        {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}. ' }}
        {{- 'Do not use variables.\n\n' }}
        {%- for tool in tools %}
            {{- (tool | tojson(indent=4)) + '\n\n' }}
        {%- endfor %}
    {%- endif %}
    {{- system_message + '<|eot_id|>' }}
{%- endif %}
{%- for message in loop_messages %}
    {%- if message.role == 'assistant' %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
        {%- generation %}
            {%- if message.content is string %}{{- message.content }}{%- endif %}
            {%- if message.tool_calls is defined and message.tool_calls %}
                {{- '<|python_tag|>' }}
                {%- for tool_call in message.tool_calls %}
                    {%- if not loop.first %}{{- '; ' }}{%- endif %}
                    {%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
                    {{- '{"name": ' + (tool_call.name | tojson) + ', "parameters": ' }}
                    {%- if tool_call.arguments is string %}{{- tool_call.arguments }}{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}
                    {{- '}' }}
                {%- endfor %}
                {{- '<|eom_id|>' }}
            {%- else %}
                {{- '<|eot_id|>' }}
            {%- endif %}
        {%- endgeneration %}
    {%- elif message.role in ['tool', 'ipython'] %}
        {{- '<|start_header_id|>ipython<|end_header_id|>\n\n' + message.content + '<|eot_id|>' }}
    {%- elif message.role in ['user', 'system'] %}
        {{- '<|start_header_id|>' + message.role + '<|end_header_id|>\n\n' + message.content + '<|eot_id|>' }}
    {%- else %}
        {{- raise_exception('the llama3 chat format has no role ' + message.role) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

FORMATS: dict[str, ChatFormat] = {
    "acorn": ChatFormat(
        name="acorn",
        special_tokens=(
            "<|bos|>", "<|eos|>", "<|pad|>",
            "<|system|>", "<|user|>", "<|assistant|>", "<|end|>",
            "<|tool_call|>", "<|/tool_call|>", "<|tool_output|>", "<|/tool_output|>",
        ),
        bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>",
        stop_tokens=("<|end|>", "<|eos|>"),
        template=ACORN_TEMPLATE,
        tool_syntax=ToolSyntax(call_open="<|tool_call|>", call_close="<|/tool_call|>"),
    ),
    "chatml": ChatFormat(
        name="chatml",
        special_tokens=(
            "<|endoftext|>", "<|im_start|>", "<|im_end|>",
            "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
        ),
        bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        stop_tokens=("<|im_end|>", "<|endoftext|>"),
        template=CHATML_TEMPLATE,
        # Qwen2.5's: a newline before a call that follows text or another call.
        tool_syntax=ToolSyntax(call_open="<tool_call>\n", call_close="\n</tool_call>", separator="\n",
                               after_content="\n"),
    ),
    "llama3": ChatFormat(
        name="llama3",
        special_tokens=(
            "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eot_id|>", "<|eom_id|>", "<|python_tag|>", "<|finetune_right_pad_id|>",
        ),
        bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>", pad_token="<|finetune_right_pad_id|>",
        stop_tokens=("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"),
        template=LLAMA3_TEMPLATE,
        tool_syntax=ToolSyntax(begin="<|python_tag|>", separator="; ", arguments_key="parameters", bare=True),
    ),
}


def get_format(name: str) -> ChatFormat:
    """The chat format called `name`, or an AcornError listing the known ones."""
    try:
        return FORMATS[name]
    except KeyError:
        raise AcornError(f"unknown chat format {name!r}; choose one of {', '.join(FORMATS)}") from None
