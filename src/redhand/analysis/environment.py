"""What is unusual about the program and about the host: the sections of a crash report
that say so, each point with its evidence.

The program: static or dynamic, PIE or not, the libc it carries or loads,
packed (UPX's marks, no section headers, code that is compressed or both
writable and executable), a crash in code that no file holds (unpacked or
generated at run time), a jump into the legacy vsyscall page, a SIGSYS from
a seccomp filter.

The host: kernel release, hypervisor (/sys/hypervisor/type, the
``hypervisor`` CPU flag, the DMI vendor and product), container (the cgroup
and the namespaces that differ from init's), CPU model and flags, ASLR, the
core size limit and core_pattern.  For a live process these are its host;
for a core they are this machine's, which may not be the one that crashed
(the report says so).
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field

from redhand.elf import constants as c
from redhand.target.unpacked import UPX_MARK

TYPE_CHECKING = False
if TYPE_CHECKING:
    from redhand.elf.file import ElfFile
    from redhand.target.target import Target

__all__ = [
    "Fact",
    "HostFacts",
    "ProgramFacts",
    "host_facts",
    "host_summary",
    "program_facts",
    "summary",
]

VSYSCALL_START = 0xFFFFFFFFFF600000
VSYSCALL_END = 0xFFFFFFFFFF601000
_HIGH_ENTROPY = 7.2  # bits a byte: compressed or encrypted (machine code is about 5.5-6.5)
_GLIBC_VERSION = re.compile(
    rb"GNU C Library \(([^)]*)\) (?:stable |development )?release version (\d+\.\d+)"
)


@dataclass(frozen=True)
class Fact:
    """One unusual point: ``key`` for programs, ``what`` for people, ``evidence`` for both."""

    key: str
    what: str
    evidence: str

    def to_json(self) -> dict[str, str]:
        return {"key": self.key, "what": self.what, "evidence": self.evidence}


@dataclass
class ProgramFacts:
    """The executable as the crash report sees it; None where it could not be read."""

    path: str | None = None
    static: bool | None = None
    pie: bool | None = None
    interpreter: str | None = None
    libc: str | None = None
    packer: str | None = None
    unusual: list[Fact] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "static": self.static,
            "pie": self.pie,
            "interpreter": self.interpreter,
            "libc": self.libc,
            "packer": self.packer,
            "unusual": [fact.to_json() for fact in self.unusual],
        }


@dataclass
class HostFacts:
    """The machine: every field None when it could not be read."""

    kernel: str | None = None
    hypervisor: str | None = None
    hypervisor_evidence: list[str] = field(default_factory=list)
    container: str | None = None
    container_evidence: list[str] = field(default_factory=list)
    cpu_model: str | None = None
    cpu_flags: list[str] = field(default_factory=list)
    aslr: int | None = None
    core_limit: str | None = None
    core_pattern: str | None = None
    this_machine: bool = True  # False: a core from elsewhere may have crashed on another host

    def to_json(self) -> dict[str, object]:
        return {
            "kernel": self.kernel,
            "hypervisor": self.hypervisor,
            "hypervisor_evidence": self.hypervisor_evidence,
            "container": self.container,
            "container_evidence": self.container_evidence,
            "cpu_model": self.cpu_model,
            "cpu_flags": self.cpu_flags,
            "aslr": self.aslr,
            "core_limit": self.core_limit,
            "core_pattern": self.core_pattern,
            "this_machine": self.this_machine,
        }


# -- the program ------------------------------------------------------------------


def _main_elf(target: Target) -> ElfFile | None:
    for module in target.modules:
        if target.exe is not None and module.path == target.exe:
            return module.elf()
    return None


def entropy(data: bytes) -> float:
    """Shannon entropy in bits a byte (0 for nothing)."""
    if not data:
        return 0.0
    counts = Counter(data)
    total = len(data)
    return -sum(n / total * math.log2(n / total) for n in counts.values())


def program_facts(target: Target) -> ProgramFacts:
    facts = ProgramFacts(path=target.exe)
    elf = _main_elf(target)
    if elf is not None:
        _file_facts(elf, facts)
        if facts.packer is not None:
            _packed_mapping(target, elf, facts)
            _unpacked_facts(target, facts)
    _loaded_libc(target, facts)
    _crash_site_facts(target, facts)
    return facts


def _file_facts(elf: ElfFile, facts: ProgramFacts) -> None:
    segments = list(elf.iter_segments())
    interp = next((s for s in segments if s.p_type == c.PT_INTERP), None)
    dynamic = any(s.p_type == c.PT_DYNAMIC for s in segments)
    facts.pie = elf.e_type == c.ET_DYN
    facts.static = interp is None
    if interp is not None:
        facts.interpreter = interp.data().split(b"\0", 1)[0].decode(errors="replace")
    if facts.static:
        how = "static-pie" if facts.pie and dynamic else "static"
        facts.unusual.append(
            Fact("static", f"a {how} executable", "no PT_INTERP: no dynamic linker, no libraries")
        )
    head = elf.read(0, min(elf.size, 4096))
    tail = elf.read(max(elf.size - 4096, 0), min(elf.size, 4096))
    marks = [name for name, data in (("header", head), ("end", tail)) if UPX_MARK in data]
    if marks:
        facts.packer = "UPX"
        evidence = [f"'UPX!' marks in its {' and '.join(marks)}"]
        if elf.num_sections() == 0:
            evidence.append("no section headers")
        load = [s for s in segments if s.p_type == c.PT_LOAD]
        entry = next((s for s in load if s.contains_vaddr(elf.e_entry)), None)
        if entry is not None and entry is load[-1] and len(load) > 1:
            evidence.append(f"the entry point {elf.e_entry:#x} is in its last segment (the stub)")
        facts.unusual.append(
            Fact(
                "packed",
                "packed by UPX: the code that runs is unpacked into anonymous memory at start",
                "; ".join(evidence),
            )
        )
    for segment in segments:
        if segment.p_type == c.PT_LOAD and segment.writable and segment.executable:
            facts.unusual.append(
                Fact(
                    "writable-executable",
                    "a segment both writable and executable (self-modifying or packed code)",
                    f"PT_LOAD at {segment.p_vaddr:#x}, {segment.p_memsz:#x} bytes, RWX",
                )
            )
            break
    if facts.packer is None:
        largest = max(
            (s for s in segments if s.p_type == c.PT_LOAD and s.p_filesz),
            key=lambda s: s.p_filesz,
            default=None,
        )
        if largest is not None and largest.p_filesz >= 4096:
            bits = entropy(largest.data()[: 1 << 20])
            if bits >= _HIGH_ENTROPY:
                facts.unusual.append(
                    Fact(
                        "high-entropy",
                        "its largest segment looks compressed or encrypted (a packer?)",
                        f"{bits:.2f} bits a byte in the PT_LOAD at {largest.p_vaddr:#x}",
                    )
                )
    if facts.static:
        facts.libc = _static_libc(elf)


def _packed_mapping(target: Target, elf: ElfFile, facts: ProgramFacts) -> None:
    """A packed file keeps only a small mapping of itself once its stub has run."""
    mapped = sum(
        m.end - m.start for m in target.mappings if m.path == target.exe and m.path is not None
    )
    if 0 < mapped < elf.size // 2:
        for index, fact in enumerate(facts.unusual):
            if fact.key == "packed":
                evidence = f"{fact.evidence}; only {mapped} of its {elf.size} bytes are mapped"
                facts.unusual[index] = Fact(fact.key, fact.what, evidence)


def _unpacked_facts(target: Target, facts: ProgramFacts) -> None:
    """What the packed program really is (static or not, its interpreter), from its unpacked
    copy when one names its code: the packed file's own headers describe the stub."""
    copy = target.unpacked.module if target.unpacked is not None else None
    elf = copy.elf() if copy is not None else None
    if elf is None:
        return
    unpacked = ProgramFacts()
    _file_facts(elf, unpacked)
    facts.static, facts.pie, facts.interpreter = unpacked.static, unpacked.pie, unpacked.interpreter
    if unpacked.libc is not None:
        facts.libc = unpacked.libc
    facts.unusual = [f for f in facts.unusual if f.key != "static"]
    facts.unusual[:0] = [f for f in unpacked.unusual if f.key == "static"]


def _static_libc(elf: ElfFile) -> str | None:
    """glibc's version string in a static executable (None: not found, or packed)."""
    data = elf.read(0, elf.size)
    match = _GLIBC_VERSION.search(data)
    if match is not None:
        return f"glibc {match.group(2).decode()} ({match.group(1).decode()}), linked in"
    if b"musl" in data:
        return "musl, linked in"
    if b"GLIBC_TUNABLES" in data or b"Fatal glibc error" in data:
        return "glibc (a static build records no version), linked in"
    return None


def _loaded_libc(target: Target, facts: ProgramFacts) -> None:
    for module in target.modules:
        name = module.name
        if name.startswith("libc.so") or name.startswith("libc-"):
            elf = module.elf()
            version = None
            if elf is not None:
                match = _GLIBC_VERSION.search(elf.read(0, elf.size))
                if match is not None:
                    version = match.group(2).decode()
            facts.libc = f"glibc {version}" if version else module.path
            facts.libc += f", loaded from {module.path}"
            return
        if name.startswith("ld-musl") or name.startswith("libc.musl"):
            facts.libc = f"musl, loaded from {module.path}"
            return


def _crash_site_facts(target: Target, facts: ProgramFacts) -> None:
    crash = target.crash
    if crash is None:
        return
    thread = next((t for t in target.threads if t.tid == crash.thread), None)
    pc = thread.registers.pc if thread is not None and thread.registers is not None else None
    if pc is not None and VSYSCALL_START <= pc < VSYSCALL_END:
        page = next((m for m in target.mappings if m.path == "[vsyscall]"), None)
        if page is None:
            mode = "this kernel does not map it: vsyscall=none, every such call faults"
        else:
            kind = "emulate" if "r" in page.perms else "xonly"
            mode = (
                f"this kernel maps it ({page.perms}: vsyscall={kind}, which emulates the three "
                "entry points at 0x...000, 0x...400 and 0x...800 and faults anywhere else)"
            )
        facts.unusual.append(
            Fact(
                "vsyscall",
                "a jump into the legacy vsyscall page (old static binaries call it for "
                "time() and gettimeofday())",
                f"pc {pc:#x}; {mode}",
            )
        )
    elif pc is not None:
        mapping = target.find_mapping(pc)
        if mapping is not None and "x" in mapping.perms and mapping.path in (None, "", "[heap]"):
            where = (
                f"pc {pc:#x} in an anonymous {mapping.perms} mapping "
                f"{mapping.start:#x}-{mapping.end:#x}"
            )
            named = target.modules.find(pc)
            if named is None:
                what = "its frames are less certain"
            else:
                how = target.unpacked.how if target.unpacked is not None else None
                if how is None or how.startswith("--exe"):
                    how = f"{named.path}, an unpacked copy"
                what = f"named from {how}"
                where += ", whose bytes are the copy's code, byte for byte"
            facts.unusual.append(
                Fact(
                    "anonymous-code",
                    "the crash is in code that no file holds (unpacked or generated at run "
                    f"time): {what}",
                    where,
                )
            )
    if crash.signal == 31 and thread is not None and thread.siginfo is not None:  # SIGSYS
        from redhand.capture import syscalls

        nr = thread.siginfo.syscall
        name = syscalls.name(nr) if nr is not None else "an unknown call"
        mode = _seccomp_mode(target)
        facts.unusual.append(
            Fact(
                "seccomp",
                f"a seccomp filter refused {name}()" + (f" (nr {nr})" if nr is not None else ""),
                f"SIGSYS with si_syscall {nr}; seccomp mode: {mode}",
            )
        )


def _seccomp_mode(target: Target) -> str:
    if target.source != "live" or target.pid is None:
        return "not in a core (see /proc/PID/status of a live process)"
    try:
        with open(f"/proc/{target.pid}/status") as status:
            for line in status:
                if line.startswith("Seccomp:"):
                    value = line.split()[1]
                    return {"0": "none", "1": "strict", "2": "filter"}.get(value, value)
    except OSError:
        pass
    return "unknown"


# -- the host ---------------------------------------------------------------------

_DMI_VENDORS = (
    ("QEMU", "KVM"),
    ("KVM", "KVM"),
    ("Xen", "Xen"),
    ("Microsoft Corporation", "Hyper-V"),
    ("VMware", "VMware"),
    ("innotek", "VirtualBox"),
    ("Amazon EC2", "KVM (Amazon EC2)"),
    ("Google", "KVM (Google Compute Engine)"),
)


def _read(path: str) -> str | None:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:
        return None


def summary(facts: ProgramFacts) -> str:
    """``static executable, not PIE; glibc 2.36, loaded from ...``"""
    parts = []
    if facts.static is not None:
        parts.append("static executable" if facts.static else "dynamic executable")
    if facts.pie is not None:
        parts.append("PIE" if facts.pie else "not PIE")
    if facts.interpreter:
        parts.append(f"interpreter {facts.interpreter}")
    text = ", ".join(parts) or "not read"
    if facts.libc:
        text += f"; {facts.libc}"
    return text


def host_summary(facts: HostFacts) -> str:
    """One line: kernel, hypervisor, container, CPU, ASLR, core limit and pattern."""
    parts = [f"kernel {facts.kernel}" if facts.kernel else "kernel ?"]
    if facts.hypervisor:
        how = f" ({'; '.join(facts.hypervisor_evidence)})" if facts.hypervisor_evidence else ""
        parts.append(f"hypervisor: {facts.hypervisor}{how}")
    if facts.container == "yes":
        parts.append(f"in a container ({'; '.join(facts.container_evidence)})")
    if facts.cpu_model:
        parts.append(f"CPU {facts.cpu_model} ({len(facts.cpu_flags)} flags)")
    if facts.aslr is not None:
        parts.append(f"ASLR {facts.aslr}" + (" (off)" if facts.aslr == 0 else ""))
    if facts.core_limit is not None:
        parts.append(f"core size limit {facts.core_limit}")
    if facts.core_pattern is not None:
        parts.append(f"core_pattern {facts.core_pattern!r}")
    return ", ".join(parts)


def host_facts(pid: int | None = None, *, this_machine: bool = True) -> HostFacts:
    """The host of ``pid`` (or of redhand): read from /proc and /sys now."""
    facts = HostFacts(kernel=os.uname().release, this_machine=this_machine)
    _cpu(facts)
    _hypervisor(facts)
    _container(facts, pid)
    aslr = _read("/proc/sys/kernel/randomize_va_space")
    facts.aslr = int(aslr) if aslr is not None and aslr.isdigit() else None
    facts.core_pattern = _read("/proc/sys/kernel/core_pattern")
    limits = _read(f"/proc/{pid if pid is not None else 'self'}/limits") or ""
    for line in limits.splitlines():
        if line.startswith("Max core file size"):
            soft, hard = line.split()[4:6]
            facts.core_limit = soft if soft == hard else f"{soft} (hard {hard})"
    return facts


def _cpu(facts: HostFacts) -> None:
    cpuinfo = _read("/proc/cpuinfo") or ""
    for line in cpuinfo.splitlines():
        key, _colon, value = line.partition(":")
        key = key.strip()
        if key == "model name" and facts.cpu_model is None:
            facts.cpu_model = value.strip()
        elif key == "flags" and not facts.cpu_flags:
            facts.cpu_flags = value.split()
        if facts.cpu_model is not None and facts.cpu_flags:
            break


def _hypervisor(facts: HostFacts) -> None:
    evidence = facts.hypervisor_evidence
    kind = _read("/sys/hypervisor/type")
    if kind:
        facts.hypervisor = kind.capitalize() if kind == "xen" else kind
        evidence.append(f"/sys/hypervisor/type is {kind!r}")
    vendor = _read("/sys/class/dmi/id/sys_vendor")
    product = _read("/sys/class/dmi/id/product_name")
    if vendor or product:
        evidence.append(f"DMI: {vendor or '?'} {product or '?'}".rstrip())
        if facts.hypervisor is None:
            text = f"{vendor or ''} {product or ''}"
            for mark, name in _DMI_VENDORS:
                if mark in text and not (name == "Hyper-V" and "Virtual" not in text):
                    facts.hypervisor = name
                    break
    if "hypervisor" in facts.cpu_flags:
        evidence.append("the CPU has the 'hypervisor' flag")
        if facts.hypervisor is None:
            facts.hypervisor = "a hypervisor (unnamed)"
    elif facts.hypervisor is None and facts.cpu_flags:
        facts.hypervisor = "none"
        evidence.append("no 'hypervisor' CPU flag")


def _container(facts: HostFacts, pid: int | None) -> None:
    who = str(pid) if pid is not None else "self"
    cgroup = _read(f"/proc/{who}/cgroup") or ""
    paths = {line.split(":", 2)[2] for line in cgroup.splitlines() if line.count(":") >= 2}
    paths.discard("/")
    if paths:
        facts.container_evidence.append("cgroup " + ", ".join(sorted(paths)))
    differing = []
    for name in ("pid", "mnt", "net", "uts", "ipc", "user", "cgroup"):
        try:
            mine = os.readlink(f"/proc/{who}/ns/{name}")
            init = os.readlink(f"/proc/1/ns/{name}")
        except OSError:
            continue
        if mine != init:
            differing.append(name)
    if differing:
        facts.container_evidence.append("namespaces differing from init's: " + ", ".join(differing))
        facts.container = "yes"
    else:
        facts.container = "no" if cgroup else None
