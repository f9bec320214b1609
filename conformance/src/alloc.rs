//! A counting allocator: the "no allocation in `Selector::select`" rule of the strategy suite
//! (`select` runs under the key's lock on every acquire) is checked by counting the calling
//! thread's allocations around each `select`.
//!
//! A test binary installs it once with [`counting_allocator!`](crate::counting_allocator);
//! [`strategy_conformance!`](crate::strategy_conformance) then checks the rule. Counting is per
//! thread, so tests running in parallel do not see each other's allocations.
#![allow(unsafe_code)] // GlobalAlloc is an unsafe trait; every method forwards to `System`.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

thread_local! {
    /// Allocations (alloc, alloc_zeroed, realloc) made by this thread so far.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: a thread being torn down may still free or allocate.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

/// The system allocator, counting each thread's allocations. Install it with
/// [`counting_allocator!`](crate::counting_allocator).
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingAllocator;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; counting
// touches a const-initialized thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`; `ptr` came from this allocator, hence from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, hence from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Allocations the calling thread made so far (0 forever when the counting allocator is not
/// installed).
pub fn allocations() -> u64 {
    ALLOCATIONS.try_with(Cell::get).unwrap_or(0)
}

/// Whether [`CountingAllocator`] is the global allocator of this binary: an allocation is
/// made and must be counted.
pub fn is_installed() -> bool {
    let before = allocations();
    let probe = std::hint::black_box(Box::new(0u64));
    drop(probe);
    allocations() > before
}

/// The calling thread's allocations made while `f` runs, and its result.
pub fn counting<T>(f: impl FnOnce() -> T) -> (u64, T) {
    let before = allocations();
    let out = f();
    (allocations() - before, out)
}

/// Installs [`CountingAllocator`] as this binary's global allocator: once per test file that
/// runs [`strategy_conformance!`](crate::strategy_conformance), at its top level.
///
/// ```ignore
/// mcp_pool_conformance::counting_allocator!();
/// mcp_pool_conformance::strategy_conformance!(name: lru, strategy: Lru);
/// ```
#[macro_export]
macro_rules! counting_allocator {
    () => {
        #[global_allocator]
        static MCP_POOL_CONFORMANCE_COUNTING_ALLOCATOR: $crate::alloc::CountingAllocator =
            $crate::alloc::CountingAllocator;
    };
}
