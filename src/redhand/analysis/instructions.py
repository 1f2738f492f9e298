"""The instruction at the crash, with a few before it, and what it needs of the CPU.

Decoded with iced-x86, which also names the CPUID feature an instruction
needs (``vpxorq zmm0, zmm0, zmm0`` needs AVX512F).  For a SIGILL the
features are checked against the CPU's flags (/proc/cpuinfo: this machine's,
which for a core may not be the one that crashed): "vpxorq needs AVX512F,
which this CPU does not have".

x86 instructions have no fixed length, so "the ones before" are found by
decoding forward from the start of the function the pc is in (its symbol),
or, without one, from the nearest earlier address whose decoding lands
exactly on the pc.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from redhand.target.target import Target

__all__ = ["CrashInstructions", "crash_instructions"]

BEFORE = 4  # instructions shown before the one at the pc
_WINDOW = 64  # bytes read before the pc when no function start is known
_MAX_FUNCTION_BYTES = 1 << 16
# iced's feature names whose /proc/cpuinfo flag is not their lower-case name.
_CPUINFO_FLAG = {"CMPXCHG16B": "cx16", "CMPXCHG8B": "cx8", "SSE3": "pni", "LZCNT": "abm"}
# Features every x86_64 CPU has: never worth naming.
_BASELINE = {"INTEL8086", "INTEL186", "INTEL286", "INTEL386", "INTEL486", "X64", "CPUID", "FPU",
             "SSE", "SSE2", "CMOV", "MMX", "MSR", "TSC", "SYSCALL", "PAUSE"}  # fmt: skip


@dataclass
class CrashInstructions:
    """``lines``: (address, text, at the pc); ``needs``: the crash instruction's CPU
    features (iced's names); ``missing``: those the CPU's flags lack (SIGILL only)."""

    lines: list[tuple[int, str, bool]] = field(default_factory=list)
    needs: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    explanation: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "lines": [{"address": a, "text": t, "crash": c} for a, t, c in self.lines],
            "needs": self.needs,
            "missing": self.missing,
            "explanation": self.explanation,
        }


def _decode(code: bytes, ip: int) -> list[tuple[int, int, str, list[str]]]:
    """(address, length, text, cpuid features) of each instruction of ``code``."""
    import iced_x86

    names = {
        value: name
        for name, value in vars(iced_x86.CpuidFeature).items()
        if not name.startswith("_") and isinstance(value, int)
    }
    formatter = iced_x86.Formatter(iced_x86.FormatterSyntax.INTEL)
    formatter.hex_prefix = "0x"  # as gdb and objdump write numbers
    formatter.hex_suffix = ""
    formatter.uppercase_hex = False
    formatter.space_after_operand_separator = True
    decoded: list[tuple[int, int, str, list[str]]] = []
    for instruction in iced_x86.Decoder(64, code, ip=ip):
        if instruction.is_invalid:
            decoded.append((instruction.ip, instruction.len, "(not an instruction)", []))
            continue
        features = [names.get(f, str(f)) for f in instruction.cpuid_features()]
        decoded.append((instruction.ip, instruction.len, formatter.format(instruction), features))
    return decoded


def _read(target: Target, address: int, size: int) -> bytes:
    try:
        return target.memory.read(address, size)
    except Exception:
        return b""


def crash_instructions(target: Target, cpu_flags: list[str]) -> CrashInstructions | None:
    """The instructions around the crash pc; None without a crash or readable code."""
    crash = target.crash
    if crash is None:
        return None
    thread = next((t for t in target.threads if t.tid == crash.thread), None)
    if thread is None or thread.registers is None:
        return None
    pc = thread.registers.pc
    if pc >= 0xFFFFFFFFFF600000:  # the vsyscall page: not code the process can read
        return None
    at_pc = _read(target, pc, 16)
    if not at_pc:
        return None
    start = _function_start(thread, pc)
    decoded: list[tuple[int, int, str, list[str]]] = []
    if start is not None and 0 < pc - start <= _MAX_FUNCTION_BYTES:
        before = _read(target, start, pc - start)
        if len(before) == pc - start:
            decoded = [d for d in _decode(before + at_pc, start) if d[0] <= pc]
            if not decoded or decoded[-1][0] != pc:
                decoded = []
    if not decoded:
        decoded = _synchronised(target, pc, at_pc)
    result = CrashInstructions()
    for address, _length, text, _features in decoded[-(BEFORE + 1) :]:
        result.lines.append((address, text, address == pc))
    crash_line = decoded[-1] if decoded and decoded[-1][0] == pc else None
    if crash_line is None:
        return result if result.lines else None
    text, features = crash_line[2], crash_line[3]
    result.needs = [f for f in features if f not in _BASELINE]
    if crash.signal == 4 and result.needs:  # SIGILL
        flags = set(cpu_flags)
        result.missing = [f for f in result.needs if _cpuinfo_flag(f) not in flags]
        mnemonic = text.split()[0]
        if result.missing:
            result.explanation = (
                f"{mnemonic} needs {', '.join(result.missing)}, which this CPU does not have "
                "(the program was built for a newer CPU, or the host hides the feature)"
            )
        else:
            result.explanation = (
                f"{mnemonic} needs {', '.join(result.needs)}, which this CPU has: "
                "the instruction is not the reason, or the core comes from another CPU"
            )
    return result


def _cpuinfo_flag(feature: str) -> str:
    return _CPUINFO_FLAG.get(feature, feature.lower())


def _function_start(thread: object, pc: int) -> int | None:
    try:
        frame = thread.backtrace()[0]  # type: ignore[attr-defined]
    except (AttributeError, IndexError):
        return None
    offset = getattr(frame, "offset", None)
    if frame.pc != pc or frame.function is None or not isinstance(offset, int):
        return None  # without a function, the offset is from the module's base
    if getattr(frame, "inlined", False):
        return None
    return pc - offset


def _synchronised(target: Target, pc: int, at_pc: bytes) -> list[tuple[int, int, str, list[str]]]:
    """Decode from the earliest address before the pc whose instructions land on it."""
    for back in range(_WINDOW, 0, -1):
        before = _read(target, pc - back, back)
        if len(before) != back:
            continue
        decoded = [d for d in _decode(before + at_pc, pc - back) if d[0] <= pc]
        if decoded and decoded[-1][0] == pc and all("not an" not in d[2] for d in decoded):
            return decoded
    return [d for d in _decode(at_pc, pc)][:1]
