"""`acorn agent`: the transcript, the trace, and one-line errors."""

from __future__ import annotations

import json

import pytest

from acorn import sandbox
from acorn.cli import main


def test_acorn_agent_prints_the_transcript_and_writes_the_trace(agent_checkpoint, tmp_path, capsys):
    trace = tmp_path / "trace.jsonl"
    code = main(["agent", str(agent_checkpoint), "What is 6 + 6?", "--tools", "calculator", "--max-steps", "2",
                 "--max-new-tokens", "24", "--trace", str(trace)])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("user: What is 6 + 6?") and "[stopped: " in out.splitlines()[-1]
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    assert events[0]["event"] == "start" and events[0]["tools"] == ["calculator"] and events[0]["constrained"]
    assert events[-1]["event"] == "end" and events[-1]["steps"] == sum(e["event"] == "model" for e in events)
    assert main(["agent", str(agent_checkpoint), "2+2", "--max-steps", "1", "--max-new-tokens", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["stopped"] in ("answer", "step_limit", "invalid_calls") and len(result["steps"]) == 1


@pytest.mark.parametrize("argv,message", [
    (["--tools", "calculator,shell"], "unknown tool 'shell'; the built-in tools are: calculator, python, search, lookup"),
    (["--tools", "search"], "the search tool needs an index: pass --index INDEX"),
    (["--tools", "lookup", "--world", "/nonexistent"], "/nonexistent/world.json: no world.json here"),
    (["--tools", "calculator", "--allow", "python"], "the allowlist names 'python'"),
])
def test_bad_tool_options_are_one_line_errors(agent_checkpoint, capsys, argv, message):
    assert main(["agent", str(agent_checkpoint), "task", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("acorn: error: ") and message in err and len(err.strip().splitlines()) == 1


def test_an_empty_task_is_refused(agent_checkpoint, capsys):
    assert main(["agent", str(agent_checkpoint), "  "]) == 2
    assert "the task is empty" in capsys.readouterr().err


def test_acorn_serve_refuses_unknown_tools_before_loading(tmp_path, capsys):
    # The checkpoint does not exist: the tool name is checked first, so its error is the one shown.
    assert main(["serve", str(tmp_path / "no-model"), "--tools", "calculator,shell"]) == 2
    assert "unknown tool 'shell'" in capsys.readouterr().err


@pytest.mark.skipif(not sandbox.available(), reason="the python tool needs bubblewrap (bwrap), which is not "
                    "installed or cannot run here (.ci/run installs it)")
def test_privilege_gives_the_agent_a_policy_that_guards_the_side_effecting_tools(agent_checkpoint, monkeypatch,
                                                                                 capsys):
    import acorn.agent.loop as loop

    seen = {}

    class Capture(loop.Agent):
        def run(self, task):
            seen.update(policy=self.policy, confirm=self.confirm)
            return super().run(task)

    monkeypatch.setattr(loop, "Agent", Capture)
    argv = ["agent", str(agent_checkpoint), "2+2", "--tools", "calculator,python", "--max-steps", "1",
            "--max-new-tokens", "4"]
    assert main([*argv, "--privilege"]) == 0
    policy = seen["policy"]
    assert policy.side_effects == {"python"} and policy.trusted == {"calculator"} and policy.confirm is None
    assert seen["confirm"] is None  # the policy decides; nothing asks before an untainted call
    assert main(argv) == 0 and seen["policy"] is None
    capsys.readouterr()
