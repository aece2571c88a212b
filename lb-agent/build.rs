//! Builds the kernel programs (`lb-ebpf`'s binary) for `bpfel-unknown-none` and places the
//! object in OUT_DIR, where `src/ebpf_object.rs` embeds it: the aya-template way.
//!
//! The eBPF build needs `-Z build-std=core`; it runs on the same (stable) toolchain as the rest
//! with `RUSTC_BOOTSTRAP=1`, and needs the rust-src component and bpf-linker 0.10.0, which
//! `cargo xtask setup` installs.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let package = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "lb-ebpf")
        .ok_or_else(|| anyhow!("lb-ebpf package not found in the workspace"))?;
    let root_dir = package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", package.manifest_path))?;
    // The toolchain running this build; rustup sets RUSTUP_TOOLCHAIN for its proxies.
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".to_owned());
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    println!("cargo:rerun-if-env-changed=RUSTUP_TOOLCHAIN");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}
