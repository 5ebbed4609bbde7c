//! Nothing to build. The build-dependency on `protoc-bin-vendored` is there
//! so that Cargo fetches a protoc, which `.cargo/protoc` (the `PROTOC` of
//! `.cargo/config.toml`) gives etcd-client's build script on a machine
//! without one.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
