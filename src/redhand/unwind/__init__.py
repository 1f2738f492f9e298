"""Unwinding: DWARF CFI, frame pointers and the per-frame strategy chain."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from redhand.unwind.callsite import follows_call, is_call_before
    from redhand.unwind.cfi import CfaRule, CfiError, CfiTable, Cie, Fde, Row, Rule, RuleKind
    from redhand.unwind.expr import ExpressionError, evaluate
    from redhand.unwind.unwinder import (
        DEFAULT_STRATEGIES,
        BadCallStrategy,
        CfiStrategy,
        FramePointerStrategy,
        FrameState,
        LeafStrategy,
        RawFrame,
        SigreturnStrategy,
        Stop,
        Strategy,
        Unwinder,
        UnwindModule,
    )

# Imported on first use, so that importing one module of the package (the
# unwinder) does not import the others (the DWARF expression evaluator, needed
# only by rare CFI rules).
_LAZY = {
    "follows_call": "callsite",
    "is_call_before": "callsite",
    "CfaRule": "cfi",
    "CfiError": "cfi",
    "CfiTable": "cfi",
    "Cie": "cfi",
    "Fde": "cfi",
    "Row": "cfi",
    "Rule": "cfi",
    "RuleKind": "cfi",
    "ExpressionError": "expr",
    "evaluate": "expr",
    "DEFAULT_STRATEGIES": "unwinder",
    "BadCallStrategy": "unwinder",
    "CfiStrategy": "unwinder",
    "FramePointerStrategy": "unwinder",
    "FrameState": "unwinder",
    "LeafStrategy": "unwinder",
    "RawFrame": "unwinder",
    "SigreturnStrategy": "unwinder",
    "Stop": "unwinder",
    "Strategy": "unwinder",
    "Unwinder": "unwinder",
    "UnwindModule": "unwinder",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'redhand.unwind' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"redhand.unwind.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_STRATEGIES",
    "BadCallStrategy",
    "CfaRule",
    "CfiError",
    "CfiStrategy",
    "CfiTable",
    "Cie",
    "ExpressionError",
    "Fde",
    "FramePointerStrategy",
    "FrameState",
    "LeafStrategy",
    "RawFrame",
    "Row",
    "Rule",
    "RuleKind",
    "SigreturnStrategy",
    "Stop",
    "Strategy",
    "UnwindModule",
    "Unwinder",
    "evaluate",
    "follows_call",
    "is_call_before",
]
