//! Compiles the checked-in `.proto` with protox (a pure-Rust protobuf compiler), so building
//! appfw needs no `protoc` on the machine.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/appfw/v1/appfw.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    // `Header` is written by hand (src/header.rs): its strings are slices of the read buffer.
    prost_build::Config::new()
        .bytes(["."])
        .extern_path(".appfw.v1.Header", "crate::Header")
        .compile_fds(fds)?;
    Ok(())
}
