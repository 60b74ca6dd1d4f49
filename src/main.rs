fn main() -> std::process::ExitCode {
    oauthd::cli::main()
}
