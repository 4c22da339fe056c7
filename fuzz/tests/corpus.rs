//! Every fuzz target over its corpus (`fuzz/corpus/TARGET/`): what the fuzzer found once, and
//! the seeds it started from, run on every `cargo test` on stable.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_has_a_corpus_and_every_corpus_a_target() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, _) in lab_fuzz::TARGETS {
        assert!(!corpus(name).is_empty(), "no corpus for {name}");
    }
    for e in std::fs::read_dir(dir).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(lab_fuzz::target(&n).is_some(), "corpus/{n} has no target");
    }
}

fn replay(target: &str) {
    let t = lab_fuzz::target(target).unwrap();
    for f in corpus(target) {
        let data = std::fs::read(&f).unwrap();
        let r = std::panic::catch_unwind(|| t(&data));
        assert!(r.is_ok(), "{target}: {} fails", f.display());
    }
}

#[test]
fn devargs() {
    replay("devargs");
}

#[test]
fn eal_options() {
    replay("eal_options");
}

#[test]
fn ipc_datagram() {
    replay("ipc_datagram");
}

#[test]
fn scenario_toml() {
    replay("scenario_toml");
}

#[test]
fn capture() {
    replay("capture");
}

#[test]
fn nic_device() {
    replay("nic_device");
}

#[test]
fn vfio_user() {
    replay("vfio_user");
}

#[test]
fn telemetry() {
    replay("telemetry");
}

#[test]
fn vfio_user_replies() {
    replay("vfio_user_replies");
}
