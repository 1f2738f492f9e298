"""`redhand stack` on a process with 1,000 threads: every thread, and it keeps running."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers import LiveProgram, compile_c

from redhand.cli import main

WORKERS = 1000


PROGRAM = r"""
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static volatile uint64_t *ticks;
static pthread_barrier_t started;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t never = PTHREAD_COND_INITIALIZER;

__attribute__((noinline)) static void wait_forever(void) {
    pthread_mutex_lock(&lock);
    for (;;) pthread_cond_wait(&never, &lock);
}
__attribute__((noinline)) static void sleep_forever(void) {
    for (;;) sleep(1000);
}
__attribute__((noinline)) static void *worker(void *arg) {
    pthread_barrier_wait(&started);
    if ((uintptr_t)arg % 2) wait_forever(); else sleep_forever();
    return NULL;
}
static void *heartbeat(void *arg) {
    struct timespec pause = {0, 1000000};
    pthread_barrier_wait(&started);
    for (;;) { (*ticks)++; nanosleep(&pause, NULL); }
    return NULL;
}
int main(int argc, char **argv) {
    int workers = atoi(argv[1]);
    FILE *file = fopen(argv[2], "w+");
    static uint64_t local;
    ticks = &local;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    pthread_barrier_init(&started, NULL, workers + 2);
    pthread_t thread;
    pthread_create(&thread, &attr, heartbeat, NULL);
    for (long i = 0; i < workers; i++) pthread_create(&thread, &attr, worker, (void *)i);
    pthread_barrier_wait(&started);
    printf("ready\n");
    fflush(stdout);
    for (;;) {  /* publish the heartbeat where the test can read it */
        rewind(file);
        fprintf(file, "%llu\n", (unsigned long long)*ticks);
        fflush(file);
        usleep(2000);
    }
}
"""


def heartbeat_ticks(path: Path) -> int:
    text = path.read_text().strip()
    return int(text) if text else 0


def proc_states(pid: int) -> set[str]:
    states = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:
            continue
        states.add(stat.rsplit(")", 1)[1].split()[0])
    return states


def test_thousand_threads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    binary = compile_c(PROGRAM, tmp_path, ["-O1", "-g", "-pthread"])
    beat = tmp_path / "heartbeat"
    with LiveProgram([binary, str(WORKERS), beat], timeout=60) as program:
        code = main(["stack", "--json", str(program.pid)])
        out = capsys.readouterr().out
        assert code == 0
        document = json.loads(out)
        threads = document["threads"]
        # the workers, the heartbeat thread and the main thread
        assert len(threads) >= WORKERS + 2
        assert len({thread["tid"] for thread in threads}) == len(threads)
        names = set()
        for thread in threads:
            assert thread["frames"], thread["tid"]
            assert thread["end"] == "outermost", (thread["tid"], thread["end_detail"])
            names.update(frame["function"] for frame in thread["frames"])
        assert {"start_thread", "main"} <= names
        # the process runs on: no thread left stopped, the heartbeat advances
        assert not proc_states(program.pid) & {"t", "T"}
        before = heartbeat_ticks(beat)
        deadline = time.monotonic() + 10
        while heartbeat_ticks(beat) == before:
            assert time.monotonic() < deadline, "the heartbeat stopped"
            time.sleep(0.01)
        # and grouped text shows each distinct stack once
        assert main(["stack", str(program.pid)]) == 0
        text = capsys.readouterr().out
        assert text.count("\n#0 ") < 50
        assert f"{len(threads)} threads" in text.splitlines()[0]
