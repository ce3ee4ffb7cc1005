"""Tools and agents: a registry of tools described by JSON Schemas, the
built-in tools, and the ReAct loop that lets a chat model call them."""

from acorn.agent.loop import Agent, AgentResult, Step
from acorn.agent.tools import Tool, ToolRegistry, ToolResult

__all__ = ["Agent", "AgentResult", "Step", "Tool", "ToolRegistry", "ToolResult"]
