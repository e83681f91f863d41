//! Compiles `imstore/v1/imstore.proto` with a vendored protoc (from the
//! protoc-bin-vendored crate), so building needs no system protoc, and
//! writes the file descriptor set that server reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("imstore_descriptor.bin"))
        .compile_protos(
            &["imstore/v1/imstore.proto", "imstore/v1/raft.proto"],
            &["."],
        )?;
    println!("cargo:rerun-if-changed=imstore/v1/imstore.proto");
    println!("cargo:rerun-if-changed=imstore/v1/raft.proto");
    Ok(())
}
