//! Generates the `CA` and `NodeCA` service stubs. Messages come from `swarmca-types`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY-free: build scripts are single-threaded.
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    let include = protoc_bin_vendored::include_path()?;
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for f in ["types.proto", "specs.proto", "ca.proto", "admin.proto"] {
        println!("cargo:rerun-if-changed={}", dir.join(f).display());
    }
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .extern_path(".docker.swarmkit.v1", "::swarmca_types")
        .compile_protos(&[dir.join("ca.proto"), dir.join("admin.proto")], &[dir.clone(), include])?;
    Ok(())
}
