//! Links the `calico-mesos` executable as position-dependent (non-PIE).
//!
//! net-modules starts the binary for every call, so its start-up is on
//! every allocate, isolate and cleanup. As a PIE, the dynamic loader
//! applies about 18,000 relocations at each start, copying the ~65 pages
//! they land in: about 75 of the process's 185 page faults and 40% of its
//! CPU time here. Linked at a fixed address, nothing is relocated. Shared
//! libraries, the heap, the stack and mmaps stay randomised; only the
//! executable's own image is not (see the README's design notes).
fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
