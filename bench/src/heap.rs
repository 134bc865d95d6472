//! Live heap bytes of this process, for the memory benchmarks: resident
//! memory growth says what a connection costs, the heap count says how much
//! of it the program asked for (the rest is the allocator's rounding and
//! holes, thread stacks, the kernel's page granularity).
//!
//! A server child started with `BENCH_HEAP_FILE` writes the live count into
//! that file every 100 ms; the parent reads it next to `/proc/<pid>/status`.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

/// The system allocator, counting what is live.
pub struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

/// Live allocations by size, in 16-byte classes up to 8 KiB (the last class
/// holds everything bigger): where a connection's bytes go.
static BY_SIZE: [AtomicIsize; CLASSES] = [const { AtomicIsize::new(0) }; CLASSES];
const CLASSES: usize = 513;

fn class(size: usize) -> usize {
    size.div_ceil(16).min(CLASSES - 1)
}

fn counted(size: usize, delta: isize) {
    LIVE.fetch_add(size as isize * delta, Ordering::Relaxed);
    BY_SIZE[class(size)].fetch_add(delta, Ordering::Relaxed);
}

// SAFETY: every call is passed to `System` unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            counted(layout.size(), 1);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            counted(layout.size(), 1);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) };
        counted(layout.size(), -1);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            counted(layout.size(), -1);
            counted(new_size, 1);
        }
        p
    }
}

/// Bytes the program holds on the heap now.
pub fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// The environment variable naming the file a server child reports into.
pub const FILE_VAR: &str = "BENCH_HEAP_FILE";

/// In a server child with [`FILE_VAR`] set: writes [`live`] there every
/// 100 ms, then the live allocations of each size class.
pub fn report_if_asked() {
    let Some(path) = std::env::var_os(FILE_VAR) else { return };
    std::thread::spawn(move || loop {
        let classes: Vec<String> = BY_SIZE.iter().map(|c| c.load(Ordering::Relaxed).to_string()).collect();
        let _ = std::fs::write(&path, format!("{}\n{}", live(), classes.join(" ")));
        std::thread::sleep(Duration::from_millis(100));
    });
}

/// What a server child reported.
#[derive(Default)]
pub struct Report {
    /// Live heap bytes.
    pub live: isize,
    /// Live allocations per 16-byte size class.
    pub by_size: Vec<isize>,
}

impl Report {
    /// The size classes that grew most in bytes from `before`, largest first:
    /// (upper bound of the class in bytes, allocations added).
    pub fn grown_since(&self, before: &Report, top: usize) -> Vec<(usize, isize)> {
        let mut grown: Vec<(usize, isize)> = (0..self.by_size.len())
            .map(|c| (c * 16, self.by_size[c] - before.by_size.get(c).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect();
        grown.sort_by_key(|(size, n)| std::cmp::Reverse(*size as isize * n));
        grown.truncate(top);
        grown
    }
}

/// What a child last wrote into `path` (zeros before its first report).
pub fn read(path: &std::path::Path) -> Report {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines = text.lines();
    Report {
        live: lines.next().and_then(|l| l.trim().parse().ok()).unwrap_or(0),
        by_size: lines.next().map(|l| l.split(' ').filter_map(|n| n.parse().ok()).collect()).unwrap_or_default(),
    }
}
