//! Generates nothing. Under the `etcd` feature `protoc-bin-vendored` is a build-dependency only
//! so that cargo downloads it before building etcd-client, whose build script runs protoc through
//! scripts/protoc (see .cargo/config.toml).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
