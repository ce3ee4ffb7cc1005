"""Chat: turning a conversation into tokens and a model's reply back into tool calls.

formats.py holds the built-in chat formats (acorn, ChatML, Llama-3): each one's
template and its tool-call syntax; template.py renders conversations through a
Jinja chat template (as transformers does) with the assistant loss mask;
tools.py parses tool calls out of generated text, holds them back while a reply
streams, and builds the grammar that forces a call, all from a format's syntax.
"""

from acorn.chat.formats import FORMATS, ChatFormat, ToolSyntax, get_format
from acorn.chat.template import apply_chat_template, normalize_messages, render
from acorn.chat.tools import parse_tool_calls, streamable_content, tool_call_grammar

__all__ = ["FORMATS", "ChatFormat", "ToolSyntax", "apply_chat_template", "get_format", "normalize_messages",
           "parse_tool_calls", "render", "streamable_content", "tool_call_grammar"]
