//! The committed BPF object is what its source gives: `bpf/build.sh` rebuilds it (Debian's
//! clang, llvm and libbpf-dev, which tests/run.sh installs) and the bytes must be equal. A
//! change to bpf/depmap.bpf.c without `bpf/build.sh` fails here.

use std::path::Path;
use std::process::Command;

#[test]
fn the_committed_bpf_object_matches_its_source() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("depmap-bpf-{}.o", std::process::id()));
    let built = Command::new(root.join("bpf/build.sh"))
        .arg(&out)
        .output()
        .expect("run bpf/build.sh");
    let rebuilt = std::fs::read(&out);
    let _ = std::fs::remove_file(&out);
    assert!(
        built.status.success(),
        "bpf/build.sh failed (needs clang, llvm and libbpf-dev: tests/run.sh installs them): {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let committed = std::fs::read(root.join("bpf/depmap.bpf.o")).expect("bpf/depmap.bpf.o");
    assert!(
        rebuilt.expect("the rebuilt object") == committed,
        "bpf/depmap.bpf.o differs from what bpf/depmap.bpf.c gives: run bpf/build.sh and commit the object"
    );
}
