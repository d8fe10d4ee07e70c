//! Compiles proto/ with a vendored protoc, so no system protoc is needed.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Build scripts run single-threaded, so setting the variable cannot race.
    std::env::set_var("PROTOC", protoc);

    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files: Vec<PathBuf> = ["history", "hydrator", "persister", "tasks"]
        .iter()
        .map(|name| root.join(format!("huddle/v1/{name}.proto")))
        .collect();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("huddle_descriptor.bin");
    tonic_prost_build::configure().file_descriptor_set_path(descriptors).compile_protos(&files, &[root])?;
    Ok(())
}
