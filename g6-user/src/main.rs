//! `g6`: the G6 agent. Everything lives in the library; this only maps it to an exit status.

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    std::process::exit(g6::app::main_with_args(args));
}
