"""A DWARF expression evaluator for the expressions found in call-frame information.

CFI uses expressions for a CFA that is not a register plus an offset (PLT
entries, realigned stacks, signal trampolines) and for registers saved at a
computed address.  The evaluator is a bounded stack machine: it gives up after
:data:`MAX_STEPS` operations or :data:`MAX_STACK` stack entries, and every
failure (an unknown operation, a stack underflow, a division by zero, a jump
out of the expression, an unknown register) is an :class:`ExpressionError`.
Memory reads raise :class:`~redhand.errors.MemoryReadError` as they do
everywhere.

Arithmetic is on 64-bit unsigned values; comparisons, ``shra``, ``div`` and
``abs`` read their operands as signed, as DWARF says.  ``DW_OP_regN`` and
``DW_OP_regx`` push the register's value (a register location makes no sense
inside CFI, and GCC never emits one there).
"""

from __future__ import annotations

import struct

from redhand.target.memory import Memory
from redhand.unwind._reader import MASK64, CfiError, Reader

TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

MAX_STEPS = 1000
MAX_STACK = 256

_SIGN = 1 << 63

_DEREF_SIZES = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}

# Operation codes (DWARF 5, section 7.7.1).
DW_OP_addr = 0x03
DW_OP_deref = 0x06
DW_OP_const1u = 0x08
DW_OP_const1s = 0x09
DW_OP_const2u = 0x0A
DW_OP_const2s = 0x0B
DW_OP_const4u = 0x0C
DW_OP_const4s = 0x0D
DW_OP_const8u = 0x0E
DW_OP_const8s = 0x0F
DW_OP_constu = 0x10
DW_OP_consts = 0x11
DW_OP_dup = 0x12
DW_OP_drop = 0x13
DW_OP_over = 0x14
DW_OP_pick = 0x15
DW_OP_swap = 0x16
DW_OP_rot = 0x17
DW_OP_abs = 0x19
DW_OP_and = 0x1A
DW_OP_div = 0x1B
DW_OP_minus = 0x1C
DW_OP_mod = 0x1D
DW_OP_mul = 0x1E
DW_OP_neg = 0x1F
DW_OP_not = 0x20
DW_OP_or = 0x21
DW_OP_plus = 0x22
DW_OP_plus_uconst = 0x23
DW_OP_shl = 0x24
DW_OP_shr = 0x25
DW_OP_shra = 0x26
DW_OP_xor = 0x27
DW_OP_bra = 0x28
DW_OP_eq = 0x29
DW_OP_ge = 0x2A
DW_OP_gt = 0x2B
DW_OP_le = 0x2C
DW_OP_lt = 0x2D
DW_OP_ne = 0x2E
DW_OP_skip = 0x2F
DW_OP_lit0 = 0x30
DW_OP_lit31 = 0x4F
DW_OP_reg0 = 0x50
DW_OP_reg31 = 0x6F
DW_OP_breg0 = 0x70
DW_OP_breg31 = 0x8F
DW_OP_regx = 0x90
DW_OP_bregx = 0x92
DW_OP_deref_size = 0x94
DW_OP_nop = 0x96
DW_OP_call_frame_cfa = 0x9C

if TYPE_CHECKING:
    # Gives the value of a register by DWARF number; raises ExpressionError when unknown.
    RegisterReader = Callable[[int], int]


class ExpressionError(CfiError):
    """A DWARF expression could not be evaluated."""


def _signed(value: int) -> int:
    return value - (1 << 64) if value & _SIGN else value


def evaluate(
    expression: bytes,
    register: RegisterReader,
    memory: Memory,
    *,
    initial: Sequence[int] = (),
    cfa: int | None = None,
    bias: int = 0,
) -> int:
    """Run ``expression`` and return the value on top of the stack.

    ``initial`` is pushed first (the CFA, for DW_CFA_expression and
    DW_CFA_val_expression).  ``cfa`` answers DW_OP_call_frame_cfa.  ``bias``
    is added to DW_OP_addr operands, which are link-time addresses.
    """
    stack = [value & MASK64 for value in initial]
    reader = Reader(expression)
    end = len(expression)
    steps = 0
    try:
        while reader.pos < end:
            steps += 1
            if steps > MAX_STEPS:
                raise ExpressionError(f"expression did not finish in {MAX_STEPS} steps")
            if len(stack) > MAX_STACK:
                raise ExpressionError("expression stack overflow")
            op = reader.u8()
            if DW_OP_lit0 <= op <= DW_OP_lit31:
                stack.append(op - DW_OP_lit0)
            elif DW_OP_breg0 <= op <= DW_OP_breg31:
                stack.append((register(op - DW_OP_breg0) + reader.sleb()) & MASK64)
            elif DW_OP_reg0 <= op <= DW_OP_reg31:
                stack.append(register(op - DW_OP_reg0) & MASK64)
            elif op == DW_OP_bregx:
                number = reader.uleb()
                stack.append((register(number) + reader.sleb()) & MASK64)
            elif op == DW_OP_regx:
                stack.append(register(reader.uleb()) & MASK64)
            elif op == DW_OP_deref:
                address = stack.pop()
                stack.append(int.from_bytes(memory.read(address, 8), "little"))
            elif op == DW_OP_deref_size:
                size = reader.u8()
                if size not in _DEREF_SIZES:
                    raise ExpressionError(f"DW_OP_deref_size with size {size}")
                address = stack.pop()
                stack.append(int.from_bytes(memory.read(address, size), "little"))
            elif op == DW_OP_plus:
                right = stack.pop()
                stack[-1] = (stack[-1] + right) & MASK64
            elif op == DW_OP_plus_uconst:
                stack[-1] = (stack[-1] + reader.uleb()) & MASK64
            elif op == DW_OP_minus:
                right = stack.pop()
                stack[-1] = (stack[-1] - right) & MASK64
            elif op == DW_OP_and:
                right = stack.pop()
                stack[-1] &= right
            elif op == DW_OP_or:
                right = stack.pop()
                stack[-1] |= right
            elif op == DW_OP_xor:
                right = stack.pop()
                stack[-1] ^= right
            elif op == DW_OP_mul:
                right = stack.pop()
                stack[-1] = (stack[-1] * right) & MASK64
            elif op == DW_OP_shl:
                right = stack.pop()
                stack[-1] = (stack[-1] << right) & MASK64 if right < 64 else 0
            elif op == DW_OP_shr:
                right = stack.pop()
                stack[-1] = stack[-1] >> right if right < 64 else 0
            elif op == DW_OP_shra:
                right = stack.pop()
                stack[-1] = (_signed(stack[-1]) >> min(right, 63)) & MASK64
            elif op == DW_OP_neg:
                stack[-1] = -stack[-1] & MASK64
            elif op == DW_OP_not:
                stack[-1] = ~stack[-1] & MASK64
            elif op == DW_OP_abs:
                stack[-1] = abs(_signed(stack[-1])) & MASK64
            elif op in (DW_OP_div, DW_OP_mod):
                right = stack.pop()
                if right == 0:
                    raise ExpressionError("division by zero in an expression")
                left = stack[-1]
                if op == DW_OP_div:
                    # DWARF's div is signed and truncates toward zero.
                    quotient = abs(_signed(left)) // abs(_signed(right))
                    if (_signed(left) < 0) != (_signed(right) < 0):
                        quotient = -quotient
                    stack[-1] = quotient & MASK64
                else:
                    stack[-1] = left % right
            elif DW_OP_eq <= op <= DW_OP_ne:
                right = _signed(stack.pop())
                left = _signed(stack[-1])
                if op == DW_OP_eq:
                    result = left == right
                elif op == DW_OP_ge:
                    result = left >= right
                elif op == DW_OP_gt:
                    result = left > right
                elif op == DW_OP_le:
                    result = left <= right
                elif op == DW_OP_lt:
                    result = left < right
                else:
                    result = left != right
                stack[-1] = int(result)
            elif DW_OP_const1u <= op <= DW_OP_consts:
                stack.append(_constant(reader, op) & MASK64)
            elif op == DW_OP_addr:
                stack.append((reader.u64() + bias) & MASK64)
            elif op == DW_OP_dup:
                stack.append(stack[-1])
            elif op == DW_OP_drop:
                stack.pop()
            elif op == DW_OP_over:
                stack.append(stack[-2])
            elif op == DW_OP_pick:
                index = reader.u8()
                if index >= len(stack):
                    raise ExpressionError(f"DW_OP_pick {index} beyond the stack")
                stack.append(stack[-1 - index])
            elif op == DW_OP_swap:
                stack[-1], stack[-2] = stack[-2], stack[-1]
            elif op == DW_OP_rot:
                stack[-1], stack[-2], stack[-3] = stack[-2], stack[-3], stack[-1]
            elif op in (DW_OP_skip, DW_OP_bra):
                offset = reader.s16()
                if op == DW_OP_bra and stack.pop() == 0:
                    continue
                target = reader.pos + offset
                if not 0 <= target <= end:
                    raise ExpressionError(f"branch to {target} outside the expression")
                reader.pos = target
            elif op == DW_OP_nop:
                pass
            elif op == DW_OP_call_frame_cfa:
                if cfa is None:
                    raise ExpressionError("DW_OP_call_frame_cfa without a CFA")
                stack.append(cfa & MASK64)
            else:
                raise ExpressionError(f"unsupported DWARF operation {op:#04x}")
    except IndexError:
        raise ExpressionError("expression stack underflow") from None
    except ExpressionError:
        raise
    except CfiError as error:  # the reader: a truncated operand
        raise ExpressionError(f"malformed expression: {error.message}") from None
    except struct.error as error:  # pragma: no cover - Reader checks bounds first
        raise ExpressionError(f"truncated expression: {error}") from None
    if not stack:
        raise ExpressionError("expression left an empty stack")
    return stack[-1]


def _constant(reader: Reader, op: int) -> int:
    if op == DW_OP_const1u:
        return reader.u8()
    if op == DW_OP_const1s:
        value = reader.u8()
        return value - 0x100 if value & 0x80 else value
    if op == DW_OP_const2u:
        return reader.u16()
    if op == DW_OP_const2s:
        return reader.s16()
    if op == DW_OP_const4u:
        return reader.u32()
    if op == DW_OP_const4s:
        return reader.s32()
    if op == DW_OP_const8u:
        return reader.u64()
    if op == DW_OP_const8s:
        return reader.s64()
    if op == DW_OP_constu:
        return reader.uleb()
    return reader.sleb()
