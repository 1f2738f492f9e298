// threads.rs: Rust threads in known call chains, for comparing stacks with gdb.
//
// Prints one "thread NAME TID" line per thread, then "ready" once every
// thread has started; the test waits until each is blocked in its system call.
//
// Threads (std::thread::Builder names):
//   main     main -> threads::wait_all -> JoinHandle::join
//   condvar  threads::condvar_entry -> threads::Waiter<u64>::wait_forever -> Condvar::wait
//   channel  threads::channel_entry -> threads::receive_all::<String> -> Receiver::recv
//   sleep    threads::sleep_entry -> threads::nap::{{closure}} -> std::thread::sleep
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn gettid() -> i64 {
    extern "C" {
        fn syscall(number: i64, ...) -> i64;
    }
    // SYS_gettid on x86_64.
    unsafe { syscall(186) }
}

struct Waiter<T> {
    state: Mutex<Option<T>>,
    changed: Condvar,
}

impl<T: Copy> Waiter<T> {
    #[inline(never)]
    fn wait_forever(&self) -> T {
        let mut state = self.state.lock().unwrap();
        loop {
            if let Some(value) = *state {
                return value;
            }
            state = self.changed.wait(state).unwrap();
        }
    }
}

#[inline(never)]
fn condvar_entry(waiter: Arc<Waiter<u64>>) {
    let value = waiter.wait_forever();
    COUNTER.fetch_add(black_box(value), Ordering::Relaxed);
}

#[inline(never)]
fn receive_all<T: std::fmt::Debug>(receiver: &mpsc::Receiver<T>) -> usize {
    let mut count = 0;
    while let Ok(item) = receiver.recv() {
        black_box(&item);
        count += 1;
    }
    count
}

#[inline(never)]
fn channel_entry(receiver: mpsc::Receiver<String>) {
    let count = receive_all(&receiver);
    COUNTER.fetch_add(black_box(count as u64), Ordering::Relaxed);
}

#[inline(never)]
fn nap<F: Fn(u64) -> u64>(f: F) -> u64 {
    let mut total = 0;
    loop {
        total += black_box(f(total));
    }
}

#[inline(never)]
fn sleep_entry() {
    let total = nap(
        #[inline(never)]
        |n| {
            thread::sleep(Duration::from_secs(100_000));
            n + 1
        },
    );
    COUNTER.fetch_add(black_box(total), Ordering::Relaxed);
}

#[inline(never)]
fn wait_all(handles: Vec<thread::JoinHandle<()>>) {
    for handle in handles {
        handle.join().unwrap();
    }
}

fn main() {
    let (tid_sender, tid_receiver) = mpsc::channel::<(String, i64)>();
    let waiter = Arc::new(Waiter::<u64> { state: Mutex::new(None), changed: Condvar::new() });
    let (item_sender, item_receiver) = mpsc::channel::<String>();

    let spawn = |name: &str, body: Box<dyn FnOnce() + Send>| {
        let tids = tid_sender.clone();
        let name = name.to_string();
        thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                tids.send((name, gettid())).unwrap();
                drop(tids);
                body();
            })
            .unwrap()
    };
    let handles = vec![
        spawn("condvar", Box::new(move || condvar_entry(waiter))),
        spawn("channel", Box::new(move || channel_entry(item_receiver))),
        spawn("sleep", Box::new(sleep_entry)),
    ];
    println!("thread main {}", gettid());
    for _ in 0..handles.len() {
        let (name, tid) = tid_receiver.recv().unwrap();
        println!("thread {name} {tid}");
    }
    println!("ready");
    wait_all(handles);
    drop(item_sender);
}
