/// mimalloc instead of glibc's malloc: a request's buffers are allocated on an HTTP worker
/// and freed on the SQLite writer thread, which glibc pays for in locks and consolidation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    oauthd::cli::main()
}
