//! `odmoe collect`, `odmoe train-shadow` and `--prefetch shadow` as a user runs them on the
//! demo model, and their errors on bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/corpus/twelfth-night.txt");

fn odmoe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_odmoe")).args(args).output().expect("run odmoe")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("odmoe-shadow-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn collect_train_and_prefetch_from_the_command_line() {
    let dir = scratch();
    let (traces, shadow) = (dir.join("demo.trace"), dir.join("demo.shadow.safetensors"));
    let out = odmoe(&["collect", "--corpus", CORPUS, "--output", s(&traces), "--max-tokens", "6000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("6000 tokens × 4 layers traced"), "{}", text(&out.stderr));
    // 6000 records of a 4-byte token + 4 layers × (256 f16 + 2 u16 + 2 f32), after a
    // header of some bytes
    let len = std::fs::metadata(&traces).unwrap().len() as usize;
    let records = 6000 * (4 + 4 * (512 + 4 + 8));
    assert!(len > records && len - records < 4096, "{len} bytes");

    let out = odmoe(&["train-shadow", "--traces", s(&traces), "--output", s(&shadow), "--rank", "64", "--epochs", "3"]);
    let report = text(&out.stdout);
    assert!(out.status.success(), "{}{report}", text(&out.stderr));
    for want in ["| 1 | shadow (trained) |", "| 1 | next layer's router |", "| 2 | layer frequency |", "| 2 | previous token |", "µs per token and layer"] {
        assert!(report.contains(want), "missing {want:?} in:\n{report}");
    }

    // the same text with and without prefetching, into a cache of half the experts
    let gen = |prefetch: &str| {
        let out = odmoe(&["generate", "--prompt", "ROMEO:", "--max-tokens", "60", "--seed", "3", "--cache-budget", "6MiB", "--prefetch", prefetch, "--shadow", s(&shadow)]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        (text(&out.stdout), text(&out.stderr))
    };
    let (plain, _) = gen("off");
    let (shadowed, log) = gen("shadow");
    assert_eq!(plain, shadowed);
    assert!(log.contains("prefetch: "), "{log}");

    // errors a user can make
    let out = odmoe(&["generate", "--prompt", "x", "--max-tokens", "1", "--cache-budget", "6MiB", "--prefetch", "shadow"]);
    assert!(!out.status.success() && text(&out.stderr).contains("--shadow PATH"), "{}", text(&out.stderr));
    let out = odmoe(&["train-shadow", "--traces", CORPUS, "--output", s(&dir.join("x"))]);
    assert!(!out.status.success() && text(&out.stderr).contains("not a routing trace file"), "{}", text(&out.stderr));
    let out = odmoe(&["generate", "--prompt", "x", "--max-tokens", "1", "--prefetch", "shadow", "--shadow", s(&traces)]);
    assert!(!out.status.success() && text(&out.stderr).contains("not a shadow predictor"), "{}", text(&out.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
}
