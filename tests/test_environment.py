"""What is unusual about the program and the host, in crash reports: checked against the
program's own build and against /proc and /sys read here, independently."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
from pathlib import Path

import pytest
from helpers import compile_c, kernel_writes_cores_here, unlimited_core
from watch_helpers import redhand as run_redhand

NULL_WRITE = r"""
#include <stdio.h>
__attribute__((noinline)) static void set(volatile int *p) { *p = 1; }
int main(void) { puts("start"); set((volatile int *)0); return 0; }
"""

# Code copied into anonymous executable memory and run there: `mov dword [0], 42`; and a
# section both writable and executable, which the linker puts in an RWX segment.
ANONYMOUS_CODE = r"""
#include <string.h>
#include <sys/mman.h>
__asm__(".section .rwx,\"awx\",@progbits\n.byte 0xc3\n.previous");
int main(void)
{
	static const unsigned char code[] = {0xc7, 0x04, 0x25, 0, 0, 0, 0, 42, 0, 0, 0, 0xc3};
	int rwx = PROT_READ | PROT_WRITE | PROT_EXEC;
	void *page = mmap(0, 4096, rwx, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	memcpy(page, code, sizeof code);
	((void (*)(void))page)();
	return 0;
}
"""

VSYSCALL = r"""
int main(void) { ((long (*)(long *))0xffffffffff600001UL)(0); return 0; }
"""

SECCOMP_TRAP = r"""
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void)
{
	struct sock_filter filter[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog program = {sizeof filter / sizeof filter[0], filter};
	prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
	prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program);
	syscall(SYS_getppid);
	return 0;
}
"""


def redhand(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """redhand, with no limit on the size of the program's core (the kernel writes one)."""
    return run_redhand(*args, cwd=cwd, env=env, preexec_fn=unlimited_core)


def run_report(exe: Path, folder: Path) -> dict[str, object]:
    """``redhand run --json`` of a program that crashes: the live report."""
    result = redhand("run", "--json", "--", str(exe), cwd=folder)
    assert result.returncode > 128, result.stderr
    document: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return document


def keys(document: dict[str, object]) -> set[str]:
    return {fact["key"] for fact in document["program"]["unusual"]}  # type: ignore[index]


def glibc_version() -> str:
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    return str(libc.gnu_get_libc_version().decode())


def test_a_static_executable(tmp_path: Path) -> None:
    exe = compile_c(NULL_WRITE, tmp_path, ["-O1", "-g", "-static"])
    document = run_report(exe, tmp_path)
    program = document["program"]
    assert program["static"] is True and program["pie"] is False  # type: ignore[index]
    assert program["interpreter"] is None  # type: ignore[index]
    assert "glibc" in program["libc"] and "linked in" in program["libc"]  # type: ignore[index]
    assert "static" in keys(document)
    if kernel_writes_cores_here():  # the same from the kernel's core
        (core,) = [p for p in tmp_path.iterdir() if p.name.startswith("core")]
        from_core = json.loads(redhand("core", "--json", str(core), "--exe", str(exe)).stdout)
        assert from_core["program"]["static"] is True
        assert from_core["host"]["this_machine"] is False


def test_a_dynamic_executable_and_its_libc(tmp_path: Path) -> None:
    exe = compile_c(NULL_WRITE, tmp_path, ["-O1", "-g"])
    document = run_report(exe, tmp_path)
    program = document["program"]
    assert program["static"] is False and program["pie"] is True  # type: ignore[index]
    interpreter = subprocess.run(
        ["readelf", "-l", str(exe)], capture_output=True, text=True, check=True
    ).stdout
    assert program["interpreter"] in interpreter  # type: ignore[index]
    assert program["libc"].startswith(f"glibc {glibc_version()}, loaded from ")  # type: ignore[index]
    assert not keys(document)


def test_a_crash_in_anonymous_code_in_a_writable_executable_segment(tmp_path: Path) -> None:
    exe = compile_c(ANONYMOUS_CODE, tmp_path, ["-O1", "-g"])
    document = run_report(exe, tmp_path)
    assert {"anonymous-code", "writable-executable"} <= keys(document)


# The program a packer would carry: run by selfunpack from anonymous memory at its link
# addresses, it writes through a NULL pointer three calls deep.
UNPACKED = r"""
#include <stdio.h>
static int *volatile nowhere;
__attribute__((noinline)) static void store(int value) { *nowhere = value; }
__attribute__((noinline)) static void unpacked_work(int n) { store(n * 6); puts("not reached"); }
int main(int argc, char **argv)
{
	printf("unpacked %s running\n", argv[0]);
	fflush(stdout);
	unpacked_work(argc);
	return 0;
}
"""


def crash_frames(document: dict[str, object]) -> list[dict[str, object]]:
    frames: list[dict[str, object]] = document["threads"][0]["frames"]  # type: ignore[index]
    return frames


def anonymous_code_fact(document: dict[str, object]) -> dict[str, str]:
    (fact,) = [f for f in document["program"]["unusual"] if f["key"] == "anonymous-code"]  # type: ignore[index]
    return fact  # type: ignore[no-any-return]


def test_a_program_unpacked_into_anonymous_memory_is_named_from_an_unpacked_copy(
    tmp_path: Path,
) -> None:
    loader = compile_c("selfunpack.c", tmp_path, ["-O1", "-g"])
    unpacked = compile_c(UNPACKED, tmp_path, ["-O1", "-g", "-static"])
    other_build = compile_c(UNPACKED.replace("n * 6", "n * 7"), tmp_path, ["-O1", "-g", "-static"])
    lines = UNPACKED.splitlines()
    store_line = 1 + lines.index(next(line for line in lines if "static void store" in line))
    argv = ["--", str(loader), str(unpacked)]

    def report(*options: str) -> dict[str, object]:
        result = redhand("run", "--json", *options, *argv, cwd=tmp_path)
        assert result.returncode == 128 + signal.SIGSEGV, result.stderr
        document: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
        return document

    bare = report()
    assert crash_frames(bare)[0]["function"] is None
    assert "less certain" in anonymous_code_fact(bare)["what"]

    named = report("--exe", str(unpacked))
    frames = crash_frames(named)
    assert [f["function"] for f in frames[:3]] == ["store", "unpacked_work", "main"]
    assert frames[0]["file"] is not None and str(frames[0]["file"]).endswith(".c")
    assert frames[0]["line"] == store_line
    assert frames[0]["module"] == str(unpacked)
    fact = anonymous_code_fact(named)
    assert f"named from {unpacked}" in fact["what"] and "byte for byte" in fact["evidence"]

    refused = report("--exe", str(other_build))
    assert crash_frames(refused)[0]["function"] is None
    (warning,) = [w for w in refused["warnings"] if "--exe" in w]  # type: ignore[attr-defined]
    assert "was not used: its code differs" in warning

    if kernel_writes_cores_here():  # the kernel's core of the same crash
        (core,) = [p for p in tmp_path.iterdir() if p.name.startswith("core")]
        result = redhand("core", "--json", str(core), "--exe", str(unpacked))
        from_core = json.loads(result.stdout)
        assert [f["function"] for f in crash_frames(from_core)[:3]] == [
            "store",
            "unpacked_work",
            "main",
        ]
        result = redhand("core", "--json", str(core), "--exe", str(other_build))
        assert any("its code differs" in w for w in json.loads(result.stdout)["warnings"])


def upx_packed(program: Path) -> Path:
    if shutil.which("upx") is None:
        pytest.skip("upx is not installed (tests/run.sh installs upx-ucl)")
    packed = program.with_name(f"{program.name}-packed")
    shutil.copy(program, packed)
    subprocess.run(["upx", "-q", "-q", str(packed)], check=True, capture_output=True, timeout=120)
    return packed


def names(document: dict[str, object]) -> list[object]:
    return [frame["function"] for frame in crash_frames(document)[:3]]


@pytest.mark.parametrize("build", ["static", "dynamic PIE"])
def test_a_upx_packed_program_is_explained_and_unpacked_by_upx(tmp_path: Path, build: str) -> None:
    flags = ["-O1", "-g", "-static"] if build == "static" else ["-O1", "-g"]
    program = compile_c(UNPACKED, tmp_path, flags)
    packed = upx_packed(program)
    cache = tmp_path / "cache"
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}

    def report(*options: str, **changes: str) -> dict[str, object]:
        result = redhand(
            "run", "--json", *options, "--", str(packed), cwd=tmp_path, env={**env, **changes}
        )
        assert result.returncode == 128 + signal.SIGSEGV, result.stderr
        document: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
        return document

    # Without upx: UPX named with its evidence, the crash in anonymous code, and what to do.
    bare = report(PATH="/nonexistent")
    program_facts = bare["program"]
    assert program_facts["packer"] == "UPX"  # type: ignore[index]
    (packed_fact,) = [f for f in program_facts["unusual"] if f["key"] == "packed"]  # type: ignore[index]
    assert (
        "'UPX!' marks" in packed_fact["evidence"]
        and "no section headers" in packed_fact["evidence"]
    )
    assert names(bare)[0] is None
    assert any("upx is not installed" in w for w in bare["warnings"])  # type: ignore[attr-defined]

    # With upx: redhand unpacks a copy itself, checks it against memory and says so.
    unpacked = report()
    assert names(unpacked) == ["store", "unpacked_work", "main"]
    assert "upx unpacked" in anonymous_code_fact(unpacked)["what"]
    assert (unpacked["program"]["static"] is True) is (build == "static")  # type: ignore[index]
    if build != "static":
        assert unpacked["program"]["interpreter"]  # type: ignore[index]
    assert any(cache.rglob(f"*-{packed.name}"))

    # With the build before packing, given with --exe.
    given = report("--exe", str(program))
    assert names(given) == ["store", "unpacked_work", "main"]
    assert f"named from {program}" in anonymous_code_fact(given)["what"]

    if kernel_writes_cores_here():  # the kernel's core of the same crash
        core = max(
            (p for p in tmp_path.iterdir() if p.name.startswith("core")),
            key=lambda p: p.stat().st_mtime,
        )
        from_core = json.loads(redhand("core", "--json", str(core), env=env).stdout)
        assert from_core["program"]["packer"] == "UPX"
        assert names(from_core) == ["store", "unpacked_work", "main"]


def test_a_jump_into_the_vsyscall_page(tmp_path: Path) -> None:
    exe = compile_c(VSYSCALL, tmp_path, ["-O1", "-g"])
    document = run_report(exe, tmp_path)
    assert document["crash"]["kind"] == "vsyscall"  # type: ignore[index]
    assert "vsyscall" in keys(document)
    (fact,) = [f for f in document["program"]["unusual"] if f["key"] == "vsyscall"]  # type: ignore[index]
    mapped = "[vsyscall]" in Path("/proc/self/maps").read_text()
    assert ("vsyscall=none" in fact["evidence"]) is not mapped


def test_sigsys_from_a_seccomp_filter(tmp_path: Path) -> None:
    exe = compile_c(SECCOMP_TRAP, tmp_path, ["-O1", "-g"])
    document = run_report(exe, tmp_path)
    assert document["crash"]["signal"] == signal.SIGSYS  # type: ignore[index]
    (fact,) = [f for f in document["program"]["unusual"] if f["key"] == "seccomp"]  # type: ignore[index]
    assert "refused getppid()" in fact["what"]
    assert "seccomp mode: filter" in fact["evidence"]


def test_the_host_as_proc_and_sys_say(tmp_path: Path) -> None:
    exe = compile_c(NULL_WRITE, tmp_path, ["-O1", "-g"])
    host = run_report(exe, tmp_path)["host"]
    assert host["kernel"] == os.uname().release  # type: ignore[index]
    assert host["this_machine"] is True  # type: ignore[index]
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    flags = next(line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags"))
    assert host["cpu_model"] == model and host["cpu_flags"] == flags  # type: ignore[index]
    aslr = int(Path("/proc/sys/kernel/randomize_va_space").read_text())
    assert host["aslr"] == aslr  # type: ignore[index]
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    assert host["core_pattern"] == pattern  # type: ignore[index]
    assert host["core_limit"] == "unlimited"  # type: ignore[index]  # set in the child
    hypervisor_type = Path("/sys/hypervisor/type")
    if hypervisor_type.exists() and hypervisor_type.read_text().strip():
        assert host["hypervisor"].lower() == hypervisor_type.read_text().strip()  # type: ignore[index,union-attr]
    elif "hypervisor" in flags:
        assert host["hypervisor"] not in (None, "none")  # type: ignore[index]
    else:
        assert host["hypervisor"] in ("none", None) or "DMI" in str(host["hypervisor_evidence"])  # type: ignore[index]


def test_the_text_report_has_both_sections(tmp_path: Path) -> None:
    exe = compile_c(NULL_WRITE, tmp_path, ["-O1", "-g", "-static"])
    result = redhand("run", "--", str(exe), cwd=tmp_path)
    assert "program: static executable, not PIE" in result.stdout
    assert f"host: kernel {os.uname().release}" in result.stdout
    assert "None" not in result.stdout and "nan" not in result.stdout


def cpu_flags() -> list[str]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    return next(line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags"))


# Instructions of extensions a CPU may lack, by the feature iced-x86 names and the cpuinfo flag.
MISSING_CANDIDATES = [
    ("AVX512F", "avx512f", "0x62, 0xf1, 0xfd, 0x48, 0xef, 0xc0"),  # vpxorq zmm0, zmm0, zmm0
    ("AMX_TILE", "amx_tile", "0xc4, 0xe2, 0x78, 0x49, 0xc0"),  # tilerelease
]


def test_an_illegal_instruction_names_the_extension_the_cpu_lacks(tmp_path: Path) -> None:
    flags = set(cpu_flags())
    missing = [c for c in MISSING_CANDIDATES if c[1] not in flags]
    if not missing:
        pytest.skip("this CPU has AVX-512F and AMX: no instruction it lacks to try")
    feature, _flag, code = missing[0]
    source = f"""
    #include <string.h>
    #include <sys/mman.h>
    __attribute__((noinline)) static void run(void)
    {{
        __asm__ volatile(".byte {code}");
    }}
    int main(void) {{ run(); return 0; }}
    """
    exe = compile_c(source, tmp_path, ["-O1", "-g"])
    document = run_report(exe, tmp_path)
    assert document["crash"]["signal"] == signal.SIGILL  # type: ignore[index]
    instructions = document["instructions"]
    assert instructions["missing"] == [feature]  # type: ignore[index]
    assert "which this CPU does not have" in instructions["explanation"]  # type: ignore[index]
    (crash_line,) = [line for line in instructions["lines"] if line["crash"]]  # type: ignore[index]
    assert crash_line["text"].split()[0] in ("vpxorq", "tilerelease")
    text = redhand("run", "--", str(exe), cwd=tmp_path).stdout
    assert f"needs {feature}, which this CPU does not have" in text


def test_the_instructions_before_the_crash(tmp_path: Path) -> None:
    exe = compile_c(NULL_WRITE, tmp_path, ["-O1", "-g"])
    document = run_report(exe, tmp_path)
    lines = document["instructions"]["lines"]  # type: ignore[index]
    assert lines[-1]["crash"] and "mov" in lines[-1]["text"]
    assert len(lines) >= 2
    objdump = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", "-M", "intel", str(exe)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # The crash instruction as objdump prints it: set's store through its argument.
    assert lines[-1]["text"].replace(" ", "") == "movdwordptr[rdi],1"
    assert "DWORD PTR [rdi],0x1" in objdump


def test_upx_marks_and_no_section_headers_are_reported(tmp_path: Path) -> None:
    """A static executable doctored as UPX leaves it (its marks at the end, no section
    headers): upx itself is not in this Debian release, so the marks are put in by hand."""
    exe = compile_c(NULL_WRITE, tmp_path, ["-O1", "-g", "-static"])
    data = bytearray(exe.read_bytes())
    struct.pack_into("<Q", data, 0x28, 0)  # e_shoff
    struct.pack_into("<HHH", data, 0x3A, 0, 0, 0)  # e_shentsize, e_shnum, e_shstrndx
    data += b"\0" * 16 + b"UPX!" + b"\0" * 28
    doctored = tmp_path / "packed"
    doctored.write_bytes(bytes(data))
    doctored.chmod(0o755)
    document = run_report(doctored, tmp_path)
    program = document["program"]
    assert program["packer"] == "UPX"  # type: ignore[index]
    (fact,) = [f for f in program["unusual"] if f["key"] == "packed"]  # type: ignore[index]
    assert "'UPX!' marks in its end" in fact["evidence"]
    assert "no section headers" in fact["evidence"]


SYSCALLS_THEN_CRASH = r"""
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void)
{
	int fd = open("/nonexistent/redhand-config", O_RDONLY);
	syscall(999); /* a system call no kernel has: ENOSYS */
	if (fd < 0) {
		volatile int *p = 0;
		*p = 1;
	}
	return 0;
}
"""


def test_the_last_system_calls_before_a_crash_at_startup(tmp_path: Path) -> None:
    exe = compile_c(SYSCALLS_THEN_CRASH, tmp_path, ["-O1", "-g"])
    result = redhand("run", "--syscalls", "4", "--json", "--", str(exe), cwd=tmp_path)
    assert result.returncode == 128 + signal.SIGSEGV, result.stderr
    document = json.loads(result.stdout.splitlines()[-1])
    calls = document["syscalls"]
    assert len(calls) == 4
    opened, unknown = calls[-2], calls[-1]
    assert opened["name"] == "openat" and opened["errno_name"] == "ENOENT"
    assert unknown["number"] == 999 and unknown["errno_name"] == "ENOSYS"
    text = redhand("run", "--syscalls", "4", "--", str(exe), cwd=tmp_path).stdout
    assert "the last 4 system calls of thread" in text
    assert "openat(-100, " in text and "= -1 ENOENT (No such file or directory)" in text
    assert "a system call this kernel does not have" in text
