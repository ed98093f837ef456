//! Allocator settings for the large, short-lived buffers of training and bound passes.
//!
//! Every candle op allocates its output afresh. glibc serves buffers above its mmap threshold
//! (at most 32 MiB, below a single cnn7 activation) with `mmap` and unmaps them on free, so
//! each op re-faults and zeroes its output pages in the kernel: a quarter of a cnn7 training
//! step was spent in page faults. Serving everything from the heap and never trimming it lets
//! freed buffers be reused in place.
//!
//! One arena serves every thread: a training step runs on whichever rayon worker picks it up,
//! and with an arena per thread each worker's arena grew to the step's peak on its own, whose
//! freed buffers the other could not reuse (a `cnn-small` IBP step at 2 threads peaked at
//! about 100 MB instead of 58, CROWN-IBP's at 204 or 387 MB by which worker ran its steps).

/// Makes the process allocator keep and reuse freed memory instead of returning it to the OS.
///
/// Call once, early; later calls are harmless. The cost is that the process keeps its peak
/// memory until it exits. Does nothing off glibc.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; glibc serialises it with malloc.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_ARENA_MAX, 1);
        // −1 disables trimming (mallopt(3)); any positive int caps it at 2 GiB, below the
        // peak of a cnn7 IBP step, which would then be unmapped and re-faulted every step.
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// Physical memory plus swap of the machine in bytes (`MemTotal + SwapTotal` of
/// `/proc/meminfo`), or `None` where that cannot be read.
pub fn memory_and_swap_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = info.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    };
    Some(field("MemTotal:")? + field("SwapTotal:").unwrap_or(0))
}
