//! Rebuild the eBPF object when bpf-linker changes (aya-template convention). Also runs when the
//! host builds this crate as a build-dependency of g6-user, so a missing linker is not an error.
fn main() {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("bpf-linker"))
            .find(|p| p.is_file())
    });
    if let Some(linker) = found {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
