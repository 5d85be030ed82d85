"""The speedup rule examples in docs/plugin-hooks.md run as written (each asserts its own result)."""

from __future__ import annotations


def test_the_speedup_rule_example_runs(plugin_hooks_example):
    plugin_hooks_example("## register_speedup_rules(register)", "docs_speedup_example")


def test_the_rule_for_a_new_op_example_runs(plugin_hooks_example):
    plugin_hooks_example("### Where a rule goes", "docs_speedup_op_example")
