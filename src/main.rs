//! The `aiq` binary: parse the command line, hand over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    aiq::frontend::cli::main_with(aiq::frontend::cli::Cli::parse())
}

/// Wide rows make the Parquet writer allocate and free buffers of about a
/// megabyte for every page it writes. glibc hands blocks that large back to
/// the kernel when freed (mmap/munmap, or trimming the heap), so every page
/// faulted its buffers in again, zeroed: a third of the system time of a
/// 64 KB row (`benches/memory.sh`). Fixed thresholds keep such blocks in
/// the heap for reuse; peak memory stays bounded by what is in use at once.
/// Only the binary sets this: a program that embeds the library (the Python
/// package) keeps its own allocator settings.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}
