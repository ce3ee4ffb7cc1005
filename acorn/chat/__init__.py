"""Chat: turning a conversation into tokens and a model's reply back into tool calls.

formats.py holds the built-in chat formats (acorn, ChatML, Llama-3): each one's
template and its tool-call syntax; template.py renders conversations through a
Jinja chat template (as transformers does) with the assistant loss mask;
tools.py parses tool calls out of generated text.
"""

from acorn.chat.formats import FORMATS, ChatFormat, get_format
from acorn.chat.template import apply_chat_template, normalize_messages, parse_tool_calls, render

__all__ = ["FORMATS", "ChatFormat", "apply_chat_template", "get_format", "normalize_messages", "parse_tool_calls",
           "render"]
