//! Generates the message types of `docker.swarmkit.v1` with prost only (no tonic), so that the
//! pure core and store crates can use them without pulling in an RPC runtime.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(p) => std::path::PathBuf::from(p),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let include = protoc_bin_vendored::include_path()?;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = ["types.proto", "specs.proto", "objects.proto", "ca.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={}", dir.join(f).display());
    }
    let mut cfg = prost_build::Config::new();
    cfg.protoc_executable(protoc);
    cfg.btree_map(["."]);
    cfg.compile_protos(&files.map(|f| dir.join(f)), &[dir.clone(), include])?;
    Ok(())
}
