//! The command line as a newcomer meets it: every model command runs on the demo model
//! without `--model`, short flags and negative numbers parse, words instead of debug
//! output, a closed pipe ends a command quietly, the environment switches never stop a
//! command from starting, and `odmoe chat` carries a conversation.

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};

fn odmoe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_odmoe")).args(args).output().expect("run odmoe")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn every_model_command_runs_on_the_demo_model() {
    for args in [
        &["info"][..],
        &["tokenize", "--text", "ROMEO:"],
        &["detokenize", "--ids", "1,2,3"],
        &["logits", "--tokens", "1,2"],
        &["generate", "-p", "ROMEO:", "-n", "3", "-t", "0"],
    ] {
        let out = odmoe(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("using the demo model"), "{args:?}: {}", text(&out.stderr));
    }
    // convert: --model, and --input as before
    let dir = std::env::temp_dir().join(format!("odmoe-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (i, flag) in ["--model", "--input"].iter().enumerate() {
        let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/odmoe-demo-shakespeare-Q8_0.gguf");
        let store = dir.join(format!("store{i}"));
        let out = odmoe(&["convert", flag, demo, "--output", store.to_str().unwrap()]);
        assert!(out.status.success(), "{flag}: {}", text(&out.stderr));
        assert!(store.join("manifest.json").is_file(), "{flag}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn generate_takes_negative_numbers_and_speaks_in_words() {
    // a negative temperature reaches the check that refuses it, not the flag parser
    let out = odmoe(&["generate", "--prompt", "ROMEO:", "--temperature", "-1"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("temperature") && !err.contains("unexpected argument"), "{err}");
    let out = odmoe(&["generate", "--prompt", "ROMEO:", "--max-tokens", "4", "--temperature", "0"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("finish: length"), "{}", text(&out.stderr));
}

#[test]
fn a_reader_that_leaves_ends_the_command_quietly() {
    // `odmoe logits ... | head -c 100`: the command ends without an error message
    let mut child = Command::new(env!("CARGO_BIN_EXE_odmoe"))
        .args(["logits", "--tokens", "1,2,3,4,5,6,7,8"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 100];
    child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    assert!(first.starts_with(b"{\"logits\":[["));
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(!err.contains("error") && !err.to_lowercase().contains("broken pipe"), "{err}");
}

#[test]
fn environment_switches_do_not_stop_a_command() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_odmoe"));
    cmd.args(["generate", "-p", "ROMEO:", "-n", "2"]);
    for k in ["ODMOE_NO_VNNI", "ODMOE_NO_SIMD", "ODMOE_NO_SUBGROUPS", "ODMOE_NO_HUGE_PAGES", "ODMOE_PACK_EXPERTS"] {
        cmd.env(k, "1");
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Runs `odmoe chat` (greedy, short replies) with `input` typed; (stdout, stderr).
fn chat(input: &str) -> (String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_odmoe"))
        .args(["chat", "-n", "8", "-t", "0", "--system", "You are a player."])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    (text(&out.stdout), text(&out.stderr))
}

#[test]
fn chat_carries_a_conversation_and_keeps_its_cache() {
    // one message alone: its reply (and a newline) is all of stdout
    let (alone, _) = chat("Good morrow!\n");
    assert!(alone.len() > 1 && alone.ends_with('\n'), "{alone:?}");
    // a conversation: that message, a second one over two lines, a new conversation with
    // the first message again, then /exit (what follows is never read)
    let (stdout, stderr) = chat("Good morrow!\nWhat news\\\nfrom court?\n/reset\nGood morrow!\n/exit\nnever read\n");
    let stats: Vec<&str> = stderr.lines().filter(|l| l.contains("new prompt tokens")).collect();
    assert_eq!(stats.len(), 3, "{stderr}");
    let cached = |l: &str| -> usize { l.split('(').nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap() };
    // the first turn starts from nothing; the second follows the first, which stays
    // cached; after /reset the same first message shares all but its last token with the
    // cache and, greedy, gets the same reply as alone, from cached keys and values
    assert_eq!(cached(stats[0]), 0, "{stderr}");
    assert!(cached(stats[1]) > 0, "{stderr}");
    assert!(cached(stats[2]) > 0, "{stderr}");
    assert!(stderr.contains("(a new conversation)"), "{stderr}");
    assert!(stdout.starts_with(&alone) && stdout.ends_with(&alone) && stdout.len() > 2 * alone.len(), "{stdout:?} vs {alone:?}");
}

#[test]
fn the_context_is_the_models_within_the_key_value_memory_or_what_is_asked() {
    let context_line = |args: &[&str], env: &[(&str, &str)]| -> String {
        let mut c = Command::new(env!("CARGO_BIN_EXE_odmoe"));
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stderr).lines().find(|l| l.starts_with("context: ")).unwrap_or_else(|| panic!("{args:?}: no context line")).to_string()
    };
    // the demo model's trained context (1024; 4 KiB of keys and values a position)
    let l = context_line(&["generate", "-p", "ROMEO:", "-n", "2"], &[]);
    assert!(l.starts_with("context: 1024 positions (the model's trained context"), "{l}");
    // bounded by the key/value memory: 100 KiB holds 25 positions
    let l = context_line(&["generate", "-p", "ROMEO:", "-n", "2"], &[("ODMOE_LIMITS_KV_BUDGET", "100KiB")]);
    assert!(l.starts_with("context: 25 positions") && l.contains("limits.kv_budget"), "{l}");
    // asked for, beyond the trained context: allowed, with a warning
    let l = context_line(&["chat", "-c", "2048"], &[]);
    assert!(l.starts_with("context: 2048 positions (asked for") && l.contains("beyond the 1024"), "{l}");
    // a prompt that does not fit is refused, saying so
    let out = odmoe(&["generate", "-p", &"ROMEO: ".repeat(20), "-c", "8"]);
    assert!(!out.status.success() && text(&out.stderr).contains("the context holds 8"), "{}", text(&out.stderr));
}
