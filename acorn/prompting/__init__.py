"""Prompting: getting more out of a model without changing its weights.

strategies.py holds each strategy as a small function over the one engine
(zero-shot, few-shot, chain of thought, self-consistency, system prompts and
roles); answers.py turns completions into answers and votes; examples.py
chooses few-shot demonstrations (at random or by embedding similarity);
tree.py is tree-of-thoughts search over partial solutions. None of them
generates on its own: every token comes from acorn.infer.Engine.
"""

from acorn.prompting.answers import extract_answer, majority_vote
from acorn.prompting.examples import Example, choose_examples
from acorn.prompting.strategies import (STRATEGIES, Answer, chain_of_thought, few_shot, self_consistency,
                                        zero_shot)
from acorn.prompting.tree import Thought, tree_of_thoughts, tree_search

__all__ = ["Answer", "Example", "STRATEGIES", "Thought", "chain_of_thought", "choose_examples", "extract_answer",
           "few_shot", "majority_vote", "self_consistency", "tree_of_thoughts", "tree_search", "zero_shot"]
