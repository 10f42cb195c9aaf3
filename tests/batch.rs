//! A batched step over several sequences gives each sequence exactly the logits it gets
//! running alone, whatever else shares the step: prompt chunks beside single decode
//! tokens, sequences at different positions, logits asked for or not. A step that fails
//! leaves every cache as it was.

mod common;

use odmoe::model::{KvCache, Logits, Model, Sequence};

const PROMPTS: [&[u32]; 3] = [&[1, 17, 300, 42, 511, 7], &[3, 450], &[99, 256, 128, 3, 77, 12, 5, 9, 400]];
const NEXT: [u32; 4] = [11, 222, 33, 444];

/// Each prompt alone, then the NEXT tokens one at a time: every position's logits.
fn alone(m: &Model, prompt: &[u32]) -> Vec<Vec<f32>> {
    let mut c = m.new_cache(64);
    let v = m.config().n_vocab;
    let mut out: Vec<Vec<f32>> = m.forward(prompt, &mut c, Logits::All).unwrap().chunks(v).map(<[f32]>::to_vec).collect();
    for &t in &NEXT {
        out.push(m.forward(&[t], &mut c, Logits::Last).unwrap());
    }
    out
}

#[test]
fn batched_steps_equal_each_sequence_alone_bit_for_bit() {
    for name in ["mixtral.f32", "qwen2moe.f32", "qwen3moe.f32", "olmoe.f32", "deepseek2.f32", "deepseek3.f32", "kimik2.f32", "mixtral_h256.Q4_K_M", "qwen3moe_h256.Q8_0"] {
        let m = Model::open(common::fixture(&format!("models/{name}.gguf"))).unwrap();
        let v = m.config().n_vocab;
        let want: Vec<Vec<Vec<f32>>> = PROMPTS.iter().map(|p| alone(&m, p)).collect();
        let mut caches: Vec<KvCache> = PROMPTS.iter().map(|_| m.new_cache(64)).collect();
        // step 1: sequence 0's whole prompt, sequence 1's first prompt token (chunked
        // prefill, no logits wanted), sequence 2's first five prompt tokens
        let [c0, c1, c2] = &mut caches[..] else { unreachable!() };
        let got = m
            .forward_batch(&mut [
                Sequence { tokens: PROMPTS[0], cache: c0, logits: Logits::All },
                Sequence { tokens: &PROMPTS[1][..1], cache: c1, logits: Logits::None },
                Sequence { tokens: &PROMPTS[2][..5], cache: c2, logits: Logits::All },
            ])
            .unwrap();
        assert_eq!(got[0], want[0][..PROMPTS[0].len()].concat(), "{name}: sequence 0, prompt");
        assert!(got[1].is_empty());
        assert_eq!(got[2], want[2][..5].concat(), "{name}: sequence 2, prompt head");
        // step 2: sequence 0 decodes, 1 finishes its prompt, 2 finishes its prompt
        let got = m
            .forward_batch(&mut [
                Sequence { tokens: &NEXT[..1], cache: c0, logits: Logits::Last },
                Sequence { tokens: &PROMPTS[1][1..], cache: c1, logits: Logits::Last },
                Sequence { tokens: &PROMPTS[2][5..], cache: c2, logits: Logits::Last },
            ])
            .unwrap();
        assert_eq!(got[0], want[0][PROMPTS[0].len()], "{name}: sequence 0, first decode");
        assert_eq!(got[1], want[1][PROMPTS[1].len() - 1], "{name}: sequence 1, prompt end");
        assert_eq!(got[2], want[2][PROMPTS[2].len() - 1], "{name}: sequence 2, prompt end");
        // a failing step (a token out of range in one sequence) changes no cache
        let before: Vec<usize> = [&*c0, &*c1, &*c2].iter().map(|c| c.len()).collect();
        let bad = [v as u32];
        assert!(m
            .forward_batch(&mut [
                Sequence { tokens: &NEXT[1..2], cache: c0, logits: Logits::Last },
                Sequence { tokens: &bad, cache: c1, logits: Logits::Last },
            ])
            .is_err());
        assert_eq!(before, [&*c0, &*c1, &*c2].iter().map(|c| c.len()).collect::<Vec<_>>());
        // then they decode together, in another order, until NEXT runs out (sequence 0,
        // one token ahead, drops out first)
        for (i, &t) in NEXT.iter().enumerate() {
            let (t0, t12) = ([NEXT.get(i + 1).copied().unwrap_or(0)], [t]);
            let mut seqs = vec![Sequence { tokens: &t12, cache: &mut *c2, logits: Logits::Last }, Sequence { tokens: &t12, cache: &mut *c1, logits: Logits::Last }];
            if i + 1 < NEXT.len() {
                seqs.push(Sequence { tokens: &t0, cache: &mut *c0, logits: Logits::Last });
            }
            let got = m.forward_batch(&mut seqs).unwrap();
            let at = |s: usize, k: usize| &want[s][PROMPTS[s].len() + k];
            assert_eq!(&got[0], at(2, i), "{name}: sequence 2, decode {i}");
            assert_eq!(&got[1], at(1, i), "{name}: sequence 1, decode {i}");
            if i + 1 < NEXT.len() {
                assert_eq!(&got[2], at(0, i + 1), "{name}: sequence 0, decode {}", i + 1);
            }
        }
    }
}

/// An f16 cache: logits within a small distance of the f32 cache's (keys and values
/// rounded to f16 as they are stored) on the f32 fixtures; the demo model's greedy choice
/// unchanged at every position (there a rounded key can tip a router's near tie, and one
/// position's logits move by 7% of the largest); and batching still changes no bit.
#[test]
fn an_f16_cache_stays_close_to_f32_and_batches_alike() {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/models/odmoe-demo-shakespeare-Q8_0.gguf");
    let argmax = |v: &[f32]| v.iter().enumerate().fold((0, f32::NEG_INFINITY), |m, (i, &x)| if x > m.1 { (i, x) } else { m }).0;
    for name in ["mixtral.f32", "qwen3moe.f32", "qwen2moe.f32", "demo"] {
        let path = if name == "demo" { demo.into() } else { common::fixture(&format!("models/{name}.gguf")) };
        let mut m = Model::open(path).unwrap();
        let exact: Vec<Vec<Vec<f32>>> = PROMPTS.iter().map(|p| alone(&m, p)).collect();
        m.set_kv_type(odmoe::model::KvType::F16);
        let half: Vec<Vec<Vec<f32>>> = PROMPTS.iter().map(|p| alone(&m, p)).collect();
        let scale = exact.iter().flatten().flatten().fold(1.0f32, |a, v| a.max(v.abs()));
        let worst = exact.iter().flatten().flatten().zip(half.iter().flatten().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        eprintln!("{name}: f16 cache off by {worst:.2e} (logits up to {scale:.2})");
        assert!(worst > 0.0, "{name}: the f16 cache changed nothing");
        if name == "demo" {
            for (a, b) in exact.iter().flatten().zip(half.iter().flatten()) {
                assert_eq!(argmax(a), argmax(b), "demo: the greedy token changed");
            }
        } else {
            assert!(worst <= 5e-3 * scale, "{name}: f16 cache off by {worst} (logits up to {scale})");
        }
        // the three prompts side by side: each as alone
        let mut caches: Vec<KvCache> = PROMPTS.iter().map(|_| m.new_cache(64)).collect();
        let mut seqs: Vec<Sequence> = caches.iter_mut().zip(PROMPTS).map(|(c, p)| Sequence { tokens: p, cache: c, logits: Logits::Last }).collect();
        let got = m.forward_batch(&mut seqs).unwrap();
        for (i, g) in got.iter().enumerate() {
            assert_eq!(*g, half[i][PROMPTS[i].len() - 1], "{name}: sequence {i}");
        }
    }
}

/// What a cache is said to take per position is what it holds after a prompt.
#[test]
fn kv_bytes_per_position_match_the_cache() {
    for (name, kv) in [("mixtral.f32", odmoe::model::KvType::F32), ("mixtral.f32", odmoe::model::KvType::F16), ("deepseek2.f32", odmoe::model::KvType::F32)] {
        let mut m = Model::open(common::fixture(&format!("models/{name}.gguf"))).unwrap();
        m.set_kv_type(kv);
        let mut c = m.new_cache(64);
        m.forward(PROMPTS[2], &mut c, Logits::Last).unwrap();
        assert_eq!(c.bytes(), m.kv_bytes_per_position() * PROMPTS[2].len() as u64, "{name} {kv:?}");
    }
}

/// A prompt long enough for its attention to be split across threads (by key-value head
/// and token; latent attention by head and token) gives the bits of the same prompt fed
/// one token at a time, whose attention is too small to split.
#[test]
fn a_long_prompt_attended_in_parallel_equals_it_token_by_token() {
    for name in ["mixtral.f32", "qwen3moe.f32", "deepseek3.f32", "mixtral_h256.Q4_K_M"] {
        let m = Model::open(common::fixture(&format!("models/{name}.gguf"))).unwrap();
        let v = m.config().n_vocab as u32;
        // 4 heads × 80 tokens × 80 positions: over the threshold at which a sequence's
        // attention is split (8,192 position-heads); one token at a time stays under it
        assert_eq!(m.config().n_head, 4, "{name}: the lengths below assume four heads");
        let prompt: Vec<u32> = (0..80u32).map(|i| (i * 37 + 5) % v).collect();
        let mut c = m.new_cache(128);
        let at_once = m.forward(&prompt, &mut c, Logits::All).unwrap();
        let mut c = m.new_cache(128);
        for (i, &t) in prompt.iter().enumerate() {
            let one = m.forward(&[t], &mut c, Logits::Last).unwrap();
            assert_eq!(one, at_once[i * v as usize..(i + 1) * v as usize], "{name}: position {i}");
        }
    }
}
