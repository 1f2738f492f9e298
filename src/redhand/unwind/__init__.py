"""Unwinding: DWARF CFI, frame pointers and the per-frame strategy chain."""

from __future__ import annotations

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
