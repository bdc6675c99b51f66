//! Every block a stored state allocates is freed with the size it was allocated with.
//!
//! Rust's allocator contract (`GlobalAlloc::dealloc`) requires the layout given at allocation.
//! glibc's `free` ignores the size, so a dependency that frees with another size runs without a
//! sign under the system allocator and corrupts the heap of a sized allocator such as jemalloc
//! (`sdallocx`). cardinality-estimator 1.0.3, our distinct-count sketch until December 2026, did
//! exactly that after a postcard round trip (cloudflare/cardinality-estimator#12). This test
//! binary checks every deallocation against its allocation, over states of every kind of ring
//! encoded and decoded the way the online store and checkpoints do.

// a global allocator is unsafe by contract; this one only adds a size header to `System`'s blocks
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use fathom_featurestore::definition::{FeatureSetConfig, FeatureSetPlan};
use fathom_featurestore::engine::{apply, read, EntityState};
use fathom_featurestore::online;
use serde_json::json;

/// Bytes in front of every block, holding the size it was allocated with.
const HEADER: usize = 16;

/// The system allocator, with each block's requested size kept in a header and compared with
/// the layout it is freed with.
struct SizeChecking;

static MISMATCHES: AtomicUsize = AtomicUsize::new(0);
static FIRST_MISMATCH: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

fn outer(layout: Layout) -> Layout {
    let align = layout.align().max(HEADER);
    Layout::from_size_align(layout.size() + align, align).expect("a valid layout")
}

unsafe impl GlobalAlloc for SizeChecking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let outer = outer(layout);
        // SAFETY: `outer` has a non-zero size; the header lies within the block, before the
        // part handed out, which keeps the requested alignment
        unsafe {
            let base = System.alloc(outer);
            if base.is_null() {
                return base;
            }
            let user = base.add(outer.align());
            (user.sub(std::mem::size_of::<usize>()) as *mut usize).write_unaligned(layout.size());
            user
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with the same alignment, so its header is there
        unsafe {
            let allocated = (ptr.sub(std::mem::size_of::<usize>()) as *const usize).read_unaligned();
            if allocated != layout.size() && MISMATCHES.fetch_add(1, Ordering::Relaxed) == 0 {
                FIRST_MISMATCH[0].store(allocated, Ordering::Relaxed);
                FIRST_MISMATCH[1].store(layout.size(), Ordering::Relaxed);
            }
            let real = Layout::from_size_align_unchecked(allocated, layout.align());
            let outer = outer(real);
            System.dealloc(ptr.sub(outer.align()), outer);
        }
    }
}

#[global_allocator]
static ALLOCATOR: SizeChecking = SizeChecking;

fn plan() -> FeatureSetPlan {
    let yaml = "entity: card\nsource: tx\nfeatures: [merchant]\naggregations:\n  \
                - { column: amount, functions: [count, sum, stddev, p50, p99, last_3, first_2, top_2], windows: [1h], period: 10m }\n  \
                - { column: merchant, functions: [distinct_count, top_3], windows: [1h, 24h], period: 10m }\n";
    let config: FeatureSetConfig = serde_yaml_ng::from_str(yaml).unwrap();
    let mut problems = Vec::new();
    config.compile("fs", "id", "fs", &mut problems).unwrap()
}

/// A state fed `distinct` different merchants (each twice) over two hours.
fn fed(plan: &FeatureSetPlan, distinct: usize) -> EntityState {
    let mut state = EntityState::new(plan);
    let t0 = 1_767_225_600_000i64;
    for i in 0..2 * distinct {
        let ts = t0 + (i as i64 * 7_200_000) / (2 * distinct as i64);
        let (amount, merchant) = (json!(i as f64 * 1.5 - 40.0), json!(format!("merchant-{}", i % distinct)));
        let columns: Vec<_> =
            plan.columns.iter().map(|c| if c == "amount" { Some(&amount) } else { Some(&merchant) }).collect();
        apply(plan, &mut state, ts, &columns, &[Some(&merchant)], None);
    }
    state
}

#[test]
fn stored_states_free_every_block_with_the_size_it_was_allocated_with() {
    let plan = plan();
    // every size a distinct sketch goes through: a few values, a list, a set, a full array
    for distinct in [1, 2, 3, 5, 7, 12, 100, 129, 1_000, 3_000, 20_000] {
        let state = fed(&plan, distinct);
        let bytes = online::encode(&plan, &state);
        let back = online::decode(&plan, &bytes).expect("a state decodes");
        let at = 1_767_225_600_000 + 7_200_000;
        assert_eq!(read(&plan, &back, at), read(&plan, &state, at), "{distinct} values");
        // decoded states are merged into windows, grown by new events and dropped
        let mut grown = back.clone();
        let extra = json!("merchant-new");
        let amount = json!(1.0);
        let columns: Vec<_> =
            plan.columns.iter().map(|c| if c == "amount" { Some(&amount) } else { Some(&extra) }).collect();
        apply(&plan, &mut grown, at, &columns, &[Some(&extra)], None);
        assert!(!read(&plan, &grown, at).is_empty());
        drop((back, grown, state));
        let mismatches = MISMATCHES.load(Ordering::Relaxed);
        assert_eq!(
            mismatches,
            0,
            "{distinct} distinct values: {mismatches} blocks freed with another size than allocated \
             (first: allocated {} bytes, freed as {})",
            FIRST_MISMATCH[0].load(Ordering::Relaxed),
            FIRST_MISMATCH[1].load(Ordering::Relaxed)
        );
    }
}
