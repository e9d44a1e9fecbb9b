//! The `weir` binary. Everything lives in the library; see `weir::cli`.

// mimalloc: the request path allocates small, short-lived buffers per
// request, where glibc malloc showed ~12% of CPU under load (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // mimalloc hands freed memory back to the OS lazily, as its thread
    // next allocates; the threads that compile components go to sleep
    // after: collect their heaps as each compilation ends.
    weir::plugin::engine::on_compiled(|| {
        // SAFETY: `mi_collect` only releases memory mimalloc holds free;
        // it is safe to call on any thread at any time.
        unsafe { libmimalloc_sys::mi_collect(true) }
    });
    weir::cli::main()
}
