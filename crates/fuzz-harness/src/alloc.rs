//! The fuzz binaries' global allocator: the system allocator with a budget. A reader that sizes
//! a buffer from a declared count or length without checking it against the bytes present
//! shows up here as one huge request; the allocator refuses it by aborting with a message that
//! names the target and where its input is, instead of letting the machine swap or the
//! allocation fail somewhere far from the cause.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The largest single allocation a fuzz case may make: 1 GiB.
pub const MAX_ALLOCATION: usize = 1 << 30;

/// The most memory the threads of a fuzz binary may hold at once: 4 GiB (targets run in
/// parallel, each holding a tiny model of a few MiB).
pub const MAX_LIVE: usize = 4 << 30;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

/// The system allocator with the budget above. Declare it in a fuzz test binary:
/// `#[global_allocator] static ALLOC: BudgetAllocator = BudgetAllocator;`
pub struct BudgetAllocator;

/// Aborts (after saying why) when a request of `size` bytes, growing live memory by `growth`,
/// is over the budget.
fn admit(size: usize, growth: usize) {
    LARGEST.fetch_max(size, Relaxed);
    if size > MAX_ALLOCATION {
        crate::runner::abort_over_budget("a single allocation of", size, MAX_ALLOCATION);
    }
    let live = LIVE.load(Relaxed).saturating_add(growth);
    if live > MAX_LIVE {
        crate::runner::abort_over_budget("live memory of", live, MAX_LIVE);
    }
}

// SAFETY: every call forwards to `System` with the caller's layout; the budget check only
// reads and writes atomics and never allocates.
unsafe impl GlobalAlloc for BudgetAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        admit(layout.size(), layout.size());
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        admit(layout.size(), layout.size());
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        admit(new_size, new_size.saturating_sub(old));
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= old {
                LIVE.fetch_add(new_size - old, Relaxed);
            } else {
                LIVE.fetch_sub(old - new_size, Relaxed);
            }
        }
        p
    }
}

/// Bytes allocated through [`BudgetAllocator`] and not yet freed.
pub fn live_bytes() -> usize {
    LIVE.load(Relaxed)
}

/// The largest single request [`BudgetAllocator`] has seen in this process.
pub fn largest_allocation() -> usize {
    LARGEST.load(Relaxed)
}
